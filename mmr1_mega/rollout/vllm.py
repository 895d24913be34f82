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
- "ipc" (colocated GPU servers; the default there): vLLM's own weight-transfer API with its CUDA IPC backend
  in packed mode. Each bucket is packed into one uint8 buffer per server GPU (on that GPU, reused from
  bucket to bucket), its handles keyed by GPU UUID are sent to every server in one `/update_weights`, and
  vLLM's workers map their GPU's buffer, unpack and copy it into the model; no file, no second copy of the
  model. The servers run with `--weight-transfer-config '{"backend": "ipc"}'`.
Updates are bracketed by `/pause?mode=wait` and `/resume`. The endpoints for RPC, cache resets and sleep
are vLLM's development API: the servers run with VLLM_SERVER_DEV_MODE=1.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmr1_mega.models.hf_io import canonical_name
from mmr1_mega.rollout import vllm_payloads as P
from mmr1_mega.rollout.protocol import EngineError, GenerationOutput, GenerationRequest, engine_prompt_ids
from mmr1_mega.rollout.server import EngineServer, ServerEngine, model_facts, post

EMBEDDINGS = "model.embed_tokens.weight"  # on-disk name
# vLLM's CPU attention backend (vllm/v1/attention/backends/cpu_attn.py, 0.32) serves these head sizes only
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass
class VLLMServer(EngineServer):
    """A vLLM server. device "cpu": the CPU build (block size 32, KV cache of cpu_kv_cache_gb, eager);
    otherwise GPUs base_gpu_id .. base_gpu_id + tp_size - 1 (CUDA_VISIBLE_DEVICES)."""

    engine = "vLLM"
    max_model_len: int | None = None
    cpu_kv_cache_gb: int = 1
    weight_transfer: str = "reload"  # "ipc": start vLLM's CUDA IPC weight-transfer backend

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
        if self.weight_transfer == "ipc":
            args += ["--weight-transfer-config", P.IPC_BACKEND_CONFIG]
        return [*(self.launcher or self.default_launcher()), *args, *self.extra_args]

    def launch_env(self) -> dict[str, str]:
        """The variables the server starts with (before the configured server_env)."""
        env = {"VLLM_SERVER_DEV_MODE": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        if self.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.cpu_kv_cache_gb)
        else:  # base_gpu_id counts the trainer's visible GPUs: name the same physical GPUs
            ids = visible_gpu_ids()
            if self.base_gpu_id + self.tp_size > len(ids):
                raise EngineError(
                    f"a vLLM server on GPUs {self.base_gpu_id}..{self.base_gpu_id + self.tp_size - 1}, but this "
                    f"process sees {len(ids)} GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})"
                )
            env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[self.base_gpu_id : self.base_gpu_id + self.tp_size])
        if self.weight_transfer == "ipc":
            env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # the IPC handles arrive pickled over HTTP
        return env

    def start(self) -> None:
        if not self.external:
            self.env = {**self.launch_env(), **self.env}
        super().start()


def visible_gpu_ids() -> list[str]:
    """This process's GPUs as the driver names them: CUDA_VISIBLE_DEVICES' entries, or 0 .. n-1."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None and vis.strip():
        return [v.strip() for v in vis.split(",")]
    return [str(i) for i in range(max(torch.cuda.device_count(), 1))]


WEIGHT_TRANSFERS = ("auto", "reload", "ipc")


def resolve_weight_transfer(weight_transfer: str, device: str, colocated: bool) -> str:
    """ "auto" is "ipc" for colocated GPU servers and "reload" otherwise; "ipc" needs both."""
    if weight_transfer not in WEIGHT_TRANSFERS:
        raise EngineError(f"vLLM weight_transfer must be one of {WEIGHT_TRANSFERS}, got {weight_transfer!r}")
    if weight_transfer == "auto":
        return "ipc" if colocated and device != "cpu" else "reload"
    if weight_transfer == "ipc" and (device == "cpu" or not colocated):
        raise EngineError(
            "vLLM weight_transfer=ipc hands CUDA memory to servers on the trainer's own GPUs: it needs "
            f"colocated GPU servers (got device={device}, colocated={colocated}); use reload"
        )
    return weight_transfer


def untied_copy(model_path: str | os.PathLike, parent: str | None = None) -> Path | None:
    """A folder serving the same model with its lm_head as a weight of its own, for vLLM's CPU build, or None
    when the model does not tie lm_head to the embeddings.

    Why: vLLM 0.32 on CPU packs each linear's weight for oneDNN once processed; a tied lm_head shares the
    embedding's parameter but is a layer of its own, and its in-place reload only reprocesses the embedding
    (vLLM's reload limitation 2: "tied parameters will only reflect processing from one of the parent
    layers"), so after every weight update the logits kept coming from the starting embedding (seen:
    |log-prob - transformers| 1.4 after one sync). Untied, lm_head.weight is loaded and reprocessed with each
    update (VLLMEngine(lm_head_from_embeddings=True) sends it). The copy links the weight files, adds
    lm_head.weight (= the embedding) in a file of its own and sets tie_word_embeddings false."""
    from safetensors.torch import save_file

    from mmr1_mega.models.hf_io import INDEX_NAME, HFCheckpoint

    src = Path(model_path)
    config = json.loads((src / "config.json").read_text())
    text = config.get("text_config") or {}
    if not config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)):
        return None
    ckpt = HFCheckpoint(src)
    embed = next((n for n in ckpt.names() if canonical_name(n) == "model.embed_tokens.weight"), None)
    if embed is None or any(canonical_name(n) == "lm_head.weight" for n in ckpt.names()):
        return None
    dst = Path(tempfile.mkdtemp(prefix="mmr1-vllm-untied-", dir=parent))
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", INDEX_NAME):
            os.symlink(f.resolve(), dst / f.name)
    save_file({"lm_head.weight": ckpt.read(embed).contiguous()}, str(dst / "lm_head.safetensors"))
    index = src / INDEX_NAME
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"]["lm_head.weight"] = "lm_head.safetensors"
        (dst / INDEX_NAME).write_text(json.dumps(data, indent=2))
    elif not (src / "model.safetensors").is_file():
        raise EngineError(f"{src}: no model.safetensors and no index: cannot add lm_head.weight beside it")
    config["tie_word_embeddings"] = False
    if "text_config" in config:
        config["text_config"]["tie_word_embeddings"] = False
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


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
    folders are written (default /dev/shm, else the temp dir); max_inflight: prompt groups in flight per
    server; lm_head_from_embeddings: the servers serve an untied copy of a tied model (`untied_copy`): every
    update that carries the embedding also carries it as lm_head.weight; owned_dirs: folders removed at
    shutdown (such a copy).
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
        max_inflight: int = 32,
        lm_head_from_embeddings: bool = False,
        owned_dirs: Sequence[str | os.PathLike] = (),
    ):
        super().__init__(servers, timeout_s, request_timeout_s, max_inflight=max_inflight)
        self.lm_head_from_embeddings = lm_head_from_embeddings
        self.owned_dirs = [str(d) for d in owned_dirs]
        if image_token_id is None:
            image_token_id = model_facts(self.servers[0].model_path)["image_token_id"]
        self.image_token_id = image_token_id
        self.colocated = colocated
        self.weight_dir = weight_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
        transfers = {s.weight_transfer for s in self.servers}
        if len(transfers) != 1:
            raise EngineError(f"vLLM servers with different weight transfers {sorted(transfers)}")
        self.weight_transfer = transfers.pop()
        self._update_dir: str | None = None
        self._updating = False
        self._shards = 0
        self._ipc_buffers: dict[int, tuple[torch.Tensor, str, tuple]] = {}  # GPU -> (buffer, UUID, args)
        self._ipc_retired: list[torch.Tensor] = []  # outgrown buffers, kept until the servers let go

    # ---- generation ------------------------------------------------------------------------------------

    def _check_requests(self, requests: Sequence[GenerationRequest]) -> None:
        super()._check_requests(requests)
        for r in requests:  # ValueError before anything is sent
            engine_prompt_ids(r, self.image_token_id, "vLLM")

    def _send_one(self, server: VLLMServer, request: GenerationRequest) -> list[GenerationOutput]:
        answer = post(
            server.url,
            P.GENERATE_PATH,
            P.generate_payload(request, self.image_token_id),
            self.request_timeout_s,
            self.engine,
        )
        return P.parse_generate_response(answer, request)

    # ---- weights ---------------------------------------------------------------------------------------

    def begin_update(self) -> None:
        """Restart dead servers, let in-flight requests finish (pause mode "wait") and open the update:
        reload, a fresh folder; ipc, vLLM's weight-update session on every server (its transfer engine
        initialised again each time, so that a restarted server is ready too)."""
        self.restart_dead()
        self._each("/pause", params={"mode": "wait"})
        self._shards = 0
        if self.weight_transfer == "ipc":
            self._each("/init_weight_transfer_engine", P.ipc_init_payload())
            self._each("/start_weight_update")
        else:
            self._update_dir = tempfile.mkdtemp(prefix="mmr1-vllm-weights-", dir=self.weight_dir)
        self._updating = True

    def update_weights(self, bucket: Sequence[tuple[str, torch.Tensor]]) -> None:
        """One bucket (HF names, full tensors): reload, written as a safetensors shard of the update
        folder; ipc, packed and sent to every server at once."""
        if not bucket:
            return
        if not self._updating:
            raise EngineError("vLLM engine: update_weights outside begin_update() ... end_update()")
        if self.lm_head_from_embeddings:
            # a copy: safetensors refuses two names for one storage
            bucket = [
                *bucket,
                *(("lm_head.weight", t.clone()) for n, t in bucket if canonical_name(n) == EMBEDDINGS),
            ]
        if self.weight_transfer == "ipc":
            self._send_ipc(bucket)
        else:
            from safetensors.torch import save_file

            tensors = {name: t.detach().to("cpu").contiguous() for name, t in bucket}
            save_file(tensors, os.path.join(self._update_dir, f"bucket-{self._shards:05d}.safetensors"))
        self._shards += 1

    def _ipc_gpus(self) -> list[int]:
        """This process's CUDA indices of every server GPU (the servers are colocated: same node)."""
        return sorted({g for s in self.servers for g in range(s.base_gpu_id, s.base_gpu_id + s.tp_size)})

    def _ipc_buffer(self, gpu: int, nbytes: int) -> tuple[torch.Tensor, str, tuple]:
        """GPU's packing buffer of at least nbytes, exported once for IPC (the servers keep its mapping
        open from bucket to bucket); an outgrown one is kept alive until end_update."""
        held = self._ipc_buffers.get(gpu)
        if held is not None and held[0].numel() >= nbytes:
            return held
        if held is not None:
            self._ipc_retired.append(held[0])
        from torch.multiprocessing.reductions import reduce_tensor

        buf = torch.empty(nbytes, dtype=torch.uint8, device=torch.device("cuda", gpu))
        _, args = reduce_tensor(buf)
        uuid = str(torch.cuda.get_device_properties(gpu).uuid)
        self._ipc_buffers[gpu] = (buf, uuid, args)
        return self._ipc_buffers[gpu]

    def _send_ipc(self, bucket: Sequence[tuple[str, torch.Tensor]]) -> None:
        flat, meta = P.pack_bucket(bucket)
        handles = {}
        for gpu in self._ipc_gpus():
            buf, uuid, args = self._ipc_buffer(gpu, flat.numel())
            buf[: flat.numel()].copy_(flat)
            handles[uuid] = args
        for gpu in self._ipc_gpus():
            torch.cuda.synchronize(gpu)  # the bytes are in place before any server maps them
        self._each("/update_weights", P.ipc_update_payload(meta, handles))

    def end_update(self) -> None:
        """reload: every server reloads the folder in place, and the folder is removed; ipc: every server
        finishes its session (the layers are processed) and the packing buffers are freed. Then the
        prefix / encoder / multimodal caches are reset and the servers resume. Every tensor was sent, so
        restarted servers are fresh again."""
        if not self._updating:
            raise EngineError("vLLM engine: end_update() without begin_update()")
        try:
            if self.weight_transfer == "ipc":
                self._each("/finish_weight_update")
            elif self._shards:
                self._each(
                    "/collective_rpc",
                    {"method": "reload_weights", "kwargs": {"weights_path": self._update_dir}},
                )
            if self._shards:
                self.flush_cache()
            self._each("/resume")
        finally:
            if self._update_dir is not None:
                shutil.rmtree(self._update_dir, ignore_errors=True)
            self._update_dir = None
            self._updating = False
            if self._ipc_buffers or self._ipc_retired:  # the servers closed their mappings at finish
                self._ipc_buffers.clear()
                self._ipc_retired.clear()
                torch.cuda.ipc_collect()
        if self._shards:
            self.stale.clear()

    def shutdown(self) -> None:
        """Stop every server this client launched; remove the folders it owns."""
        try:
            super().shutdown()
        finally:
            for d in self.owned_dirs:
                shutil.rmtree(d, ignore_errors=True)

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
