"""One SGLang server process: its command line (flags of sglang.srt.server_args, 0.5.23). Process
management (start, health, restart, stop, no orphans) is EngineServer's."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from mmr1_mega.rollout.server import EngineServer, default_log_path, post

__all__ = ["SGLangServer", "default_log_path", "post"]


@dataclass
class SGLangServer(EngineServer):
    """An SGLang server; launcher defaults to `python -m sglang.launch_server` of this interpreter."""

    engine = "SGLang"

    def default_launcher(self) -> list[str]:
        return [sys.executable, "-m", "sglang.launch_server"]

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
        return [*(self.launcher or self.default_launcher()), *args, *self.extra_args]
