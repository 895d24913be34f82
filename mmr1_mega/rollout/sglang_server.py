"""One SGLang server process: its command line (flags of sglang.srt.server_args, 0.5.23). Process
management (start, health, restart, stop, no orphans) is EngineServer's."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from mmr1_mega.rollout.server import EngineServer, default_log_path, post

__all__ = ["SGLangServer", "default_log_path", "post"]


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
