"""One rollout-engine server process (SGLang or vLLM): start, health wait with a time-out, restart, stop;
and the small HTTP helper the adapters use to talk to it. Each engine's subclass says its command line.

No orphans: a server runs in its own session (so its own children, e.g. TP workers, go with it), is
stopped on any exit of the process that started it (`atexit`, reached after exceptions and after the
trainer's signal handling), and, on Linux, is sent SIGTERM by the kernel if that process dies without
running any of it (SIGKILL, the OOM killer): PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import requests

from mmr1_mega.rollout.protocol import EngineError


def post(
    url: str,
    path: str,
    body: dict | None = None,
    timeout_s: float = 600.0,
    engine: str = "SGLang",
    params: dict | None = None,
):
    """POST a JSON body to url+path (params: its query string); returns the decoded JSON answer (its text
    when it is not JSON, None if empty).

    Raises EngineError when the server cannot be reached, answers an HTTP error, or reports
    {"success": false}; retryable (on another server) when it could not be reached, timed out or answered
    5xx. engine names the server in the message.
    """
    try:
        resp = requests.post(
            url + path, json=body if body is not None else {}, params=params, timeout=timeout_s
        )
    except requests.RequestException as e:
        raise EngineError(f"{engine} server {url} did not answer {path}: {e}", retryable=True) from e
    if resp.status_code != 200:
        raise EngineError(
            f"{engine} server {url}{path} answered {resp.status_code}: {resp.text[:500]}",
            retryable=resp.status_code >= 500,
        )
    try:
        answer = resp.json() if resp.content else None
    except ValueError:  # some endpoints answer plain text (SGLang's /flush_cache: "Cache flushed.")
        answer = resp.text
    if isinstance(answer, dict) and answer.get("success") is False:
        raise EngineError(f"{engine} server {url}{path} failed: {answer.get('message')}")
    return answer


@dataclass
class EngineServer:
    """Launch settings of one server. command() is the argv (each engine's subclass); start() /
    wait_healthy() / stop() manage the process.

    launcher: the argv prefix that starts a server (the subclass's default, e.g. `python -m
    sglang.launch_server`); a path to another environment's python, or a stand-in script in tests.
    """

    engine = "engine"  # the name in messages (class attribute, not a field)

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
    launcher: list[str] = field(default_factory=list)
    log_path: str | None = None
    env: dict = field(default_factory=dict)
    # a server someone else runs (e.g. started by the SLURM script): used, never started, stopped or restarted
    external: bool = False
    device: str = "cuda"  # "cpu": the engine's CPU build (tests, the CPU demo)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def default_launcher(self) -> list[str]:
        """The argv prefix used when `launcher` is empty."""
        raise NotImplementedError

    def command(self) -> list[str]:
        """The server's argv."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the process (not waiting for it to be healthy). An external server is only checked."""
        if self.external:
            return
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
        """True while the process runs (an external server: while it answers /health)."""
        if self.external:
            return self.healthy()
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
                    f"{self.engine} server on port {self.port} exited with code {self.process.returncode} while "
                    f"starting: see {self.log_path or 'its output'}"
                )
            if self.healthy(timeout_s=min(5.0, max(timeout_s - (time.monotonic() - start), 0.1))):
                return time.monotonic() - start
            time.sleep(poll_s)
        self.stop()
        raise EngineError(
            f"{self.engine} server on port {self.port} was not healthy within {timeout_s:.0f} s "
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
        """Stop (if running) and start again; returns the seconds until healthy. An external server cannot
        be restarted from here: EngineError."""
        if self.external:
            raise EngineError(
                f"the external {self.engine} server {self.url} is down: restart it where it runs"
            )
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


def model_facts(model_path: str | os.PathLike) -> dict:
    """What the adapter needs from a model folder's config.json: image_token_id and head_dim."""
    with open(Path(model_path) / "config.json") as f:
        c = json.load(f)
    text = c.get("text_config") or c
    heads = text.get("num_attention_heads")
    head_dim = text.get("head_dim") or (text["hidden_size"] // heads if heads else None)
    return {
        "image_token_id": c.get("image_token_id"),
        "head_dim": head_dim,
        "vocab_size": text.get("vocab_size"),
    }


def check_token_ids(requests: Sequence, vocab_size: int | None) -> None:
    """Raise ValueError naming the request when a prompt holds a token id outside [0, vocab_size): SGLang
    0.5.23 drops the connection on one instead of answering an error."""
    if vocab_size is None:
        return
    for k, r in enumerate(requests):
        ids = r.prompt_ids or []
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(
                f"request {k}: prompt token id {bad[0]} is outside the model's vocabulary (size {vocab_size})"
            )


def default_log_path(port: int, engine: str = "sglang") -> str:
    """Where a server's output goes when not told otherwise."""
    return str(Path(os.environ.get("TMPDIR", "/tmp")) / f"mmr1-{engine}-{port}.log")


class ServerEngine:
    """What every server-backed engine shares: start and health-wait its servers, restart dead ones (marked
    stale: they hold the checkpoint's weights, not the actor's, and get no generation until the next full
    weight update), spread generation over the fresh ones, stop them all. Subclasses say how one server
    generates (_send, or _send_one for one request), how a batch is checked before anything is sent
    (_check_requests) and what a restart invalidates (_on_restart).

    max_inflight: requests (prompt groups) in flight per server; max_attempts: servers one request may be
    tried on before the call fails."""

    engine = "engine"

    def __init__(
        self,
        servers: Sequence[EngineServer],
        timeout_s: float,
        request_timeout_s: float,
        max_inflight: int = 32,
        max_attempts: int = 3,
    ):
        if not servers:
            raise ValueError(f"{type(self).__name__} needs at least one server")
        if max_inflight < 1 or max_attempts < 1:
            raise ValueError(f"max_inflight={max_inflight} and max_attempts={max_attempts} must be >= 1")
        self.servers = list(servers)
        self.timeout_s, self.request_timeout_s = timeout_s, request_timeout_s
        self.max_inflight, self.max_attempts = max_inflight, max_attempts
        self.stale: set[int] = set()  # servers restarted since the last full update
        self._next = itertools.count()
        self._lock = threading.Lock()
        try:
            self.vocab_size = model_facts(self.servers[0].model_path)["vocab_size"]
        except (OSError, KeyError, ValueError):  # no readable config: the server's own checks only
            self.vocab_size = None

    # ---- to override -----------------------------------------------------------------------------------

    def _send(self, server: EngineServer, requests: list) -> list:
        """Generate `requests` on one server; per request, its n GenerationOutputs."""
        raise NotImplementedError

    def _check_requests(self, requests: Sequence) -> None:
        """Raise ValueError for a request this engine cannot serve, before anything is sent."""
        for r in requests:
            r.validate()
        check_token_ids(requests, self.vocab_size)

    def _on_restart(self) -> None:
        """A server was restarted: drop what referred to its old process (e.g. a weight-update group)."""

    # ---- lifecycle -------------------------------------------------------------------------------------

    def launch(self):
        """Start every server and wait for all to be healthy (each within timeout_s). Returns self."""
        for s in self.servers:
            s.start()
        try:
            for s in self.servers:
                s.wait_healthy(self.timeout_s)
        except EngineError:
            self.shutdown()
            raise
        return self

    def restart_dead(self) -> list[int]:
        """Restart every server whose process died or whose /health fails; returns their indices (now
        stale until the next weight update, which always sends every tensor). A dead external server (one
        another process runs, e.g. another node's) cannot be restarted from here: it is only set aside
        (stale) until mark_synced finds it healthy again."""
        restarted = []
        for i, s in enumerate(self.servers):
            if not s.alive() or not s.healthy():
                if s.external:
                    self.stale.add(i)
                    continue
                s.restart(self.timeout_s)
                self.stale.add(i)
                restarted.append(i)
        if restarted:
            self._on_restart()
        return restarted

    def mark_synced(self) -> list[int]:
        """After a weight update done by the servers' owners (engines placed per node): every healthy
        server serves the new weights, so it is fresh again. Returns the servers still set aside."""
        self.stale = {i for i, s in enumerate(self.servers) if not s.healthy()}
        return sorted(self.stale)

    def addresses(self) -> list[dict]:
        """How another process reaches these servers (EngineServer fields of an external client)."""
        return [
            {
                "host": s.host,
                "port": s.port,
                "tp_size": s.tp_size,
                "model_path": str(s.model_path),
                "device": s.device,
            }
            for s in self.servers
        ]

    def health(self) -> bool:
        """True when every server answers /health."""
        return all(s.healthy() for s in self.servers)

    def shutdown(self) -> None:
        """Stop every server this client launched."""
        for s in self.servers:
            s.stop()

    def _each(self, path: str, body: dict | None = None, params: dict | None = None) -> list:
        """POST the same body to every server (in parallel); their answers in server order."""
        with ThreadPoolExecutor(len(self.servers)) as pool:
            futures = [
                pool.submit(post, s.url, path, body, self.request_timeout_s, self.engine, params)
                for s in self.servers
            ]
            return [f.result() for f in futures]

    # ---- generation ------------------------------------------------------------------------------------

    def _send_one(self, server: EngineServer, request) -> list:
        """Generate one request on one server: its n GenerationOutputs."""
        return self._send(server, [request])[0]

    def generate(self, requests: Sequence) -> list:
        """Every request's n GenerationOutputs, in request order: generate_stream collected."""
        out: list = [None] * len(requests)
        for i, samples in self.generate_stream(requests):
            out[i] = samples
        return out

    def generate_stream(self, requests: Sequence) -> Iterator[tuple[int, list]]:
        """Yield (request index, its n GenerationOutputs) as each request finishes, in finishing order.

        One HTTP request per prompt group, at most `max_inflight` in flight per server; the next request goes
        to the fresh server with the fewest in flight (ties in turn), so a slow server takes fewer. A request
        that fails with a retryable error (server unreachable, timed out, 5xx) is sent again to another
        fresh server (up to `max_attempts` servers in all); a server found dead is restarted (ours) or set
        aside (an external one) and gets no more requests this call. A refused request (4xx) raises at once.
        Raises ValueError for a bad request before anything is sent; EngineError when no fresh server is
        left or a request failed on max_attempts servers.
        """
        self._check_requests(requests)
        if not requests:
            return
        if not self._fresh():
            raise EngineError(
                f"every {self.engine} server was restarted since the last weight update: sync weights first"
            )
        todo = collections.deque((i, ()) for i in range(len(requests)))  # (request, servers it failed on)
        load = collections.Counter()
        turn = next(self._next)
        pool = ThreadPoolExecutor(max(1, min(len(requests), self.max_inflight * len(self.servers))))
        running: dict = {}  # future -> (request index, server index, servers tried before)
        try:
            while todo or running:
                while todo:
                    i, tried = todo[0]
                    options = [k for k in self._fresh() if load[k] < self.max_inflight and k not in tried]
                    if not options:
                        if not running and not [k for k in self._fresh() if k not in tried]:
                            raise EngineError(
                                f"{self.engine} request {i} failed on server(s) {list(tried)} and no other "
                                "fresh server is left"
                            )
                        break  # wait for a slot
                    k = min(options, key=lambda k: (load[k], (k - turn) % len(self.servers)))
                    todo.popleft()
                    load[k] += 1
                    running[pool.submit(self._send_one, self.servers[k], requests[i])] = (i, k, tried)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    i, k, tried = running.pop(f)
                    load[k] -= 1
                    try:
                        samples = f.result()
                    except EngineError as e:
                        self._after_failure(k, e)
                        if len(tried) + 1 >= self.max_attempts:
                            raise EngineError(
                                f"{self.engine} request {i} failed on {len(tried) + 1} server(s); last: {e}",
                                retryable=e.retryable,
                            ) from e
                        todo.appendleft((i, (*tried, k)))
                        continue
                    yield i, samples
        finally:
            for f in running:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    def _fresh(self) -> list[int]:
        return [i for i in range(len(self.servers)) if i not in self.stale]

    def _after_failure(self, index: int, error: EngineError) -> None:
        """A request failed on server `index`: raise when the request itself was refused by a working
        server; restart (or set aside) the server when it is dead; a slow but live one stays in use."""
        server = self.servers[index]
        if server.alive() and server.healthy():
            if not error.retryable:
                raise error  # the server is fine: the request itself failed
            return
        with self._lock:
            self.restart_dead()
