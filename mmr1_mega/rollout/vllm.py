"""The vLLM engine: one or more vLLM OpenAI-compatible servers (`python -m vllm.entrypoints.openai.api_server`,
vLLM >= 0.32, each `engine_tp` GPUs), spoken to over HTTP.

Server mode, not vLLM's in-process `LLM`: the engine runs in its own environment (vLLM pins its own torch
and transformers, which need not be the actor's), on GPUs the config names, and can die and be restarted
without taking the trainer with it — the same life cycle as the SGLang engine.

Generation: `/inference/v1/generate` (token ids in, token ids + raw logprobs out; `--enable-scale-out`),
one HTTP request per prompt with its n samples, all prompts in flight at once so vLLM batches them.

Weights (`weight_transfer`):
- "reload": each bucket is written as a safetensors shard into a fresh folder (default under /dev/shm),
  and at end_update every server reloads the folder in place (`/collective_rpc reload_weights`, vLLM's
  worker method; its CPU backend repacks linear weights after loading, so `load_weights` after start-up
  cannot be used). Then the prefix, encoder and multimodal caches are reset (without the encoder reset an
  image seen before kills the engine with "Encoder cache miss"; without the prefix reset old keys and
  values are reused). Works on every device; the servers must see the trainer's filesystem (same node).
Updates are bracketed by `/pause?mode=wait` and `/resume`. The endpoints for RPC, cache resets and sleep
are vLLM's development API: the servers run with VLLM_SERVER_DEV_MODE=1.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmr1_mega.rollout import vllm_payloads as P
from mmr1_mega.rollout.protocol import EngineError, GenerationOutput, GenerationRequest
from mmr1_mega.rollout.server import EngineServer, ServerEngine, model_facts, post

# vLLM's CPU attention backend (vllm/v1/attention/backends/cpu_attn.py, 0.32) serves these head sizes only
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass
class VLLMServer(EngineServer):
    """A vLLM server. device "cpu": the CPU build (block size 32, KV cache of cpu_kv_cache_gb, eager);
    otherwise GPUs base_gpu_id .. base_gpu_id + tp_size - 1 (CUDA_VISIBLE_DEVICES)."""

    engine = "vLLM"
    max_model_len: int | None = None
    cpu_kv_cache_gb: int = 1

    def default_launcher(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]

    def command(self) -> list[str]:
        """The server's argv (flags of `vllm serve`, 0.32)."""
        args = [
            "--model",
            str(self.model_path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--tensor-parallel-size",
            str(self.tp_size),
            "--dtype",
            self.dtype,
            # log-probabilities of the unprocessed logits (no temperature / top-p / top-k): GRPO's old_logp
            "--logprobs-mode",
            "raw_logprobs",
            "--enable-scale-out",  # /inference/v1/generate: token ids in and out
        ]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        if self.device == "cpu":
            args += ["--enforce-eager", "--block-size", "32"]  # the CPU backend takes multiples of 32
            # vLLM 0.32 rewinds a seeded request's generator when chunked prefill discards the token sampled
            # after a partial prefill (gpu_model_runner._bookkeeping_sync: gen.set_offset); a CPU generator
            # has no offset, so the engine core dies ("CPU Generator does not use offset", seen 2026-11-30
            # with 16 seeded prompts x 8 samples). Without chunked prefill no prefill is partial.
            args.append("--no-enable-chunked-prefill")
            if self.max_model_len is not None:  # without chunking a step must fit a whole prompt
                args += ["--max-num-batched-tokens", str(max(self.max_model_len, 8192))]
        else:
            args += ["--gpu-memory-utilization", str(self.mem_fraction)]
            if self.colocated:
                args.append("--enable-sleep-mode")  # /sleep frees weights and KV cache for the actor
        return [*(self.launcher or self.default_launcher()), *args, *self.extra_args]

    def start(self) -> None:
        env = {"VLLM_SERVER_DEV_MODE": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        if self.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.cpu_kv_cache_gb)
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(
                str(g) for g in range(self.base_gpu_id, self.base_gpu_id + self.tp_size)
            )
        self.env = {**env, **self.env}
        super().start()


def check_servable(model_path: str | os.PathLike, device: str) -> None:
    """Raise EngineError before launch when vLLM cannot serve the model on this device."""
    if device == "cpu":
        head_dim = model_facts(model_path)["head_dim"]
        if head_dim not in CPU_HEAD_SIZES:
            raise EngineError(
                f"vLLM's CPU attention serves head sizes {list(CPU_HEAD_SIZES)}; the model at {model_path} has "
                f"head_dim {head_dim} (hidden_size / num_attention_heads): use the local or SGLang engine, "
                "or a model whose heads fit"
            )


class VLLMEngine(ServerEngine):
    """The Engine protocol over vLLM servers (life cycle, restarts and the spreading of generation are
    ServerEngine's).

    image_token_id: the model's image placeholder (read from the model folder when not given);
    colocated: servers share the actor's GPUs (they sleep while it trains); weight_dir: where update
    folders are written (default /dev/shm, else the temp dir); max_concurrency: requests in flight per
    server.
    """

    engine = "vLLM"

    def __init__(
        self,
        servers: Sequence[VLLMServer],
        image_token_id: int | None = None,
        colocated: bool = True,
        weight_dir: str | None = None,
        timeout_s: float = 600.0,
        request_timeout_s: float = 3600.0,
        max_concurrency: int = 256,
    ):
        super().__init__(servers, timeout_s, request_timeout_s)
        if image_token_id is None:
            image_token_id = model_facts(self.servers[0].model_path)["image_token_id"]
        self.image_token_id = image_token_id
        self.colocated = colocated
        self.weight_dir = weight_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
        self.max_concurrency = max_concurrency
        self._update_dir: str | None = None
        self._shards = 0

    # ---- generation ------------------------------------------------------------------------------------

    def _check_requests(self, requests: Sequence[GenerationRequest]) -> None:
        super()._check_requests(requests)
        for r in requests:
            P.generate_payload(r, self.image_token_id)  # ValueError before anything is sent

    def _send(self, server: VLLMServer, requests: list[GenerationRequest]) -> list[list[GenerationOutput]]:
        from concurrent.futures import ThreadPoolExecutor

        def one(r: GenerationRequest) -> list[GenerationOutput]:
            answer = post(
                server.url,
                P.GENERATE_PATH,
                P.generate_payload(r, self.image_token_id),
                self.request_timeout_s,
                self.engine,
            )
            return P.parse_generate_response(answer, r)

        with ThreadPoolExecutor(max(1, min(self.max_concurrency, len(requests)))) as pool:
            return list(pool.map(one, requests))

    # ---- weights ---------------------------------------------------------------------------------------

    def begin_update(self) -> None:
        """Restart dead servers, let in-flight requests finish (pause mode "wait") and open an update
        folder."""
        self.restart_dead()
        self._each("/pause", params={"mode": "wait"})
        self._update_dir = tempfile.mkdtemp(prefix="mmr1-vllm-weights-", dir=self.weight_dir)
        self._shards = 0

    def update_weights(self, bucket: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Write one bucket (HF names, full tensors) as a safetensors shard of the update folder."""
        if not bucket:
            return
        if self._update_dir is None:
            raise EngineError("vLLM engine: update_weights outside begin_update() ... end_update()")
        from safetensors.torch import save_file

        tensors = {name: t.detach().to("cpu").contiguous() for name, t in bucket}
        save_file(tensors, os.path.join(self._update_dir, f"bucket-{self._shards:05d}.safetensors"))
        self._shards += 1

    def end_update(self) -> None:
        """Every server reloads the folder in place, resets its prefix / encoder / multimodal caches and
        resumes; the folder is removed. Every tensor was sent, so restarted servers are fresh again."""
        if self._update_dir is None:
            raise EngineError("vLLM engine: end_update() without begin_update()")
        try:
            if self._shards:
                self._each(
                    "/collective_rpc",
                    {"method": "reload_weights", "kwargs": {"weights_path": self._update_dir}},
                )
                self.flush_cache()
            self._each("/resume")
        finally:
            shutil.rmtree(self._update_dir, ignore_errors=True)
            self._update_dir = None
        if self._shards:
            self.stale.clear()

    def flush_cache(self) -> None:
        """Drop every server's cached prefixes, encoder outputs and processed images."""
        for path in ("/reset_prefix_cache", "/reset_encoder_cache", "/reset_mm_cache"):
            self._each(path)

    def release_memory(self) -> None:
        """Colocated: vLLM's sleep level 1 (weights to host memory, KV cache freed). A no-op on CPU."""
        if self.colocated:
            self._each("/sleep", params={"level": "1"})

    def resume_memory(self) -> None:
        """Colocated: wake up before the next update / generation."""
        if self.colocated:
            self._each("/wake_up")
