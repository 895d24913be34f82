"""One SGLang server process: its command line, start, health wait with a time-out, restart, stop;
and the small HTTP helper the adapter uses to talk to it.

No orphans: a server runs in its own session (so its own children, e.g. TP workers, go with it), is
stopped on any exit of the process that started it (`atexit`, reached after exceptions and after the
trainer's signal handling), and, on Linux, is sent SIGTERM by the kernel if that process dies without
running any of it (SIGKILL, the OOM killer): PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import requests

from mmr1_mega.rollout.protocol import EngineError


def post(url: str, path: str, body: dict | None = None, timeout_s: float = 600.0):
    """POST a JSON body to url+path; returns the decoded JSON answer (None if empty).

    Raises EngineError when the server cannot be reached, answers an HTTP error, or reports
    {"success": false}.
    """
    try:
        resp = requests.post(url + path, json=body if body is not None else {}, timeout=timeout_s)
    except requests.RequestException as e:
        raise EngineError(f"SGLang server {url} did not answer {path}: {e}") from e
    if resp.status_code != 200:
        raise EngineError(f"SGLang server {url}{path} answered {resp.status_code}: {resp.text[:500]}")
    answer = resp.json() if resp.content else None
    if isinstance(answer, dict) and answer.get("success") is False:
        raise EngineError(f"SGLang server {url}{path} failed: {answer.get('message')}")
    return answer


@dataclass
class SGLangServer:
    """Launch settings of one server. command() is the argv; start() / wait_healthy() / stop() manage it.

    launcher: the argv prefix that starts a server (default `python -m sglang.launch_server`); tests
    point it at a stand-in script speaking the same endpoints.
    """

    model_path: str
    port: int
    tp_size: int = 1
    mem_fraction: float = 0.7
    host: str = "127.0.0.1"
    base_gpu_id: int = 0
    dtype: str = "auto"
    colocated: bool = True
    seed: int | None = None
    extra_args: list[str] = field(default_factory=list)
    launcher: list[str] = field(default_factory=lambda: [sys.executable, "-m", "sglang.launch_server"])
    log_path: str | None = None
    env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The server's argv (flags of sglang.srt.server_args, 0.5.23)."""
        args = [
            "--model-path",
            str(self.model_path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--tp-size",
            str(self.tp_size),
            "--mem-fraction-static",
            str(self.mem_fraction),
            "--base-gpu-id",
            str(self.base_gpu_id),
            "--dtype",
            self.dtype,
        ]
        if self.colocated:
            # lets release/resume_memory_occupation hand the GPU to the actor between rollouts
            args.append("--enable-memory-saver")
        if self.seed is not None:
            args += ["--random-seed", str(self.seed)]
        return [*self.launcher, *args, *self.extra_args]

    def start(self) -> None:
        """Start the process (not waiting for it to be healthy)."""
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,  # a server's own children (TP workers) die with it in stop()
            preexec_fn=_die_with_parent if _PDEATHSIG_THREAD == threading.get_ident() else None,
        )
        _LIVE[id(self)] = weakref.ref(self)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout_s: float = 5.0) -> bool:
        """True when /health answers 200 within timeout_s."""
        try:
            return requests.get(self.url + "/health", timeout=timeout_s).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout_s: float = 600.0, poll_s: float = 0.5) -> float:
        """Block until /health answers 200. Returns the seconds waited.

        Raises EngineError when the process exits first, or after timeout_s (then the process is stopped).
        """
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process is not None and self.process.poll() is not None:
                raise EngineError(
                    f"SGLang server on port {self.port} exited with code {self.process.returncode} while "
                    f"starting: see {self.log_path or 'its output'}"
                )
            if self.healthy(timeout_s=min(5.0, max(timeout_s - (time.monotonic() - start), 0.1))):
                return time.monotonic() - start
            time.sleep(poll_s)
        self.stop()
        raise EngineError(
            f"SGLang server on port {self.port} was not healthy within {timeout_s:.0f} s "
            "(raise rollout.server_timeout_s for large models, or look at its log)"
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL after grace_s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            import signal

            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self.process = None
        _LIVE.pop(id(self), None)

    def restart(self, timeout_s: float = 600.0) -> float:
        """Stop (if running) and start again; returns the seconds until healthy."""
        self.stop()
        self.start()
        return self.wait_healthy(timeout_s)


# ---- no orphans ------------------------------------------------------------------------------------------
_LIVE: dict[int, weakref.ref] = {}  # servers started and not stopped (dataclasses are not hashable)
# PR_SET_PDEATHSIG fires when the THREAD that forked the child ends: only servers started from the main
# thread get it (the trainer starts them there).
_PDEATHSIG_THREAD = threading.main_thread().ident
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: atexit and the signal handling still stop servers
        pass


@atexit.register
def stop_all_servers() -> None:
    """Stop every server this process started and has not stopped (called at interpreter exit)."""
    for ref in list(_LIVE.values()):
        server = ref()
        if server is not None:
            server.stop(grace_s=5.0)


def default_log_path(port: int) -> str:
    """Where a server's output goes when not told otherwise."""
    return str(Path(os.environ.get("TMPDIR", "/tmp")) / f"mmr1-sglang-{port}.log")
