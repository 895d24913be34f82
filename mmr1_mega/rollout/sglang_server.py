"""One SGLang server process: its command line (flags of sglang.srt.server_args, 0.5.23); and the
sglang-router process in front of several. Process management (start, health, restart, stop, no orphans)
is EngineServer's."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import requests

from mmr1_mega.rollout.protocol import EngineError
from mmr1_mega.rollout.server import EngineServer, default_log_path, post

__all__ = ["SGLangRouter", "SGLangServer", "default_log_path", "post"]


@dataclass
class SGLangServer(EngineServer):
    """An SGLang server; launcher defaults to `python -m sglang.launch_server` of this interpreter.

    deterministic: --enable-deterministic-inference, without which SGLang ignores a request's sampling
    seed (sglang/srt/sampling/sampling_batch_info.py): seeded samples repeat only with it. It restricts
    the attention backends to batch-invariant ones, so it costs throughput on GPUs.
    """

    engine = "SGLang"
    deterministic: bool = False

    def default_launcher(self) -> list[str]:
        return [sys.executable, "-m", "sglang.launch_server"]

    def start(self) -> None:
        # logprobs of the unprocessed logits (GRPO's old_logp), not of the temperature-scaled ones SGLang
        # returns by default (srt/layers/sampler.py)
        # SGLANG_VLM_CACHE_SIZE_MB=0: SGLang 0.5.23 caches vision-tower outputs by image hash and neither
        # /flush_cache nor a weight update clears that cache, so an image seen before an update would keep
        # the old tower's embeddings (seen in tests/engines). Without it each sample's image is encoded again.
        env = {"SGLANG_RETURN_ORIGINAL_LOGPROB": "1", "SGLANG_VLM_CACHE_SIZE_MB": "0"}
        if self.device == "cpu":
            env["SGLANG_USE_CPU_ENGINE"] = "1"
        self.env = {**env, **self.env}
        super().start()

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
        if self.device == "cpu":
            # SGLang's CPU engine: no overlap scheduler; its warm-up request fails on CPU (rotary on an
            # empty batch) and is skipped
            args += ["--device", "cpu", "--disable-overlap-schedule", "--skip-server-warmup"]
        elif self.colocated:
            # lets release/resume_memory_occupation hand the GPU to the actor between rollouts
            args.append("--enable-memory-saver")
        if self.seed is not None:
            args += ["--random-seed", str(self.seed)]
        if self.deterministic:
            args.append("--enable-deterministic-inference")
        return [*(self.launcher or self.default_launcher()), *args, *self.extra_args]


@dataclass
class SGLangRouter(EngineServer):
    """sglang-router (`python -m sglang_router.launch_router`, pinned 0.3.2) in front of SGLang servers:
    one address for generation; it picks the server (policy: cache_aware sends a group's samples, which
    share their prompt, to the server that holds that prefix), retries a failed request on another and
    health-checks its workers. model_path is unused (the router serves no model).

    worker_urls: the servers it starts with; add_worker / remove_worker change them while it runs (a server
    restarted with stale weights is taken out until the next weight update reaches it).
    """

    engine = "sglang-router"
    worker_urls: list[str] = field(default_factory=list)
    policy: str = "cache_aware"
    request_timeout_s: float = 3600.0

    def default_launcher(self) -> list[str]:
        return [sys.executable, "-m", "sglang_router.launch_router"]

    def command(self) -> list[str]:
        args = [
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--worker-urls",
            *self.worker_urls,
            "--policy",
            self.policy,
            "--request-timeout-secs",
            str(int(self.request_timeout_s)),
            "--log-level",
            "warn",
        ]
        return [*(self.launcher or self.default_launcher()), *args, *self.extra_args]

    def workers(self) -> dict[str, str]:
        """The router's workers now: url -> its id."""
        try:
            answer = requests.get(self.url + "/workers", timeout=30).json()
        except (requests.RequestException, ValueError) as e:
            raise EngineError(
                f"sglang-router {self.url} did not list its workers: {e}", retryable=True
            ) from e
        return {w["url"]: w["id"] for w in answer.get("workers", [])}

    def set_workers(self, urls: list[str], timeout_s: float = 30.0) -> None:
        """Make the router's workers exactly `urls` (adds and removes are queued by the router: this waits
        until its list shows them). Raises EngineError when it does not within timeout_s."""
        now = self.workers()
        for url in set(now) - set(urls):
            _request("DELETE", f"{self.url}/workers/{now[url]}")
        for url in set(urls) - set(now):
            _request("POST", f"{self.url}/workers", {"url": url})
        deadline = time.monotonic() + timeout_s
        while set(self.workers()) != set(urls):
            if time.monotonic() > deadline:
                raise EngineError(
                    f"sglang-router {self.url} did not take workers {sorted(urls)} in {timeout_s} s"
                )
            time.sleep(0.1)


def _request(method: str, url: str, body: dict | None = None) -> None:
    try:
        resp = requests.request(method, url, json=body, timeout=30)
    except requests.RequestException as e:
        raise EngineError(f"sglang-router {method} {url} failed: {e}", retryable=True) from e
    if resp.status_code >= 300:
        raise EngineError(f"sglang-router {method} {url} answered {resp.status_code}: {resp.text[:300]}")
