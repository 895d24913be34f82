"""Code that runs inside the ranks of the real-engine sync test (forked by mmr1_mega.distributed.launch)."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core.distributed import (  # noqa: E402
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from mmr1_mega.distributed.init import initialize_model_parallel  # noqa: E402
from mmr1_mega.models.build import build_model  # noqa: E402
from mmr1_mega.models.weights import export_hf, load_hf_weights  # noqa: E402
from mmr1_mega.sync.sync import sync_weights  # noqa: E402
from tests.distributed.sync_workers import LAYOUTS, _train_step  # noqa: E402


def _client(kind: str, model_dir: str, port: int):
    """An engine client for the server the test process runs (external: never started or stopped here)."""
    if kind == "vllm":
        from mmr1_mega.rollout.vllm import VLLMEngine, VLLMServer

        server = VLLMServer(model_dir, port=port, device="cpu", external=True)
        return VLLMEngine([server], colocated=False, timeout_s=120, request_timeout_s=300)
    from mmr1_mega.rollout.sglang import SGLangEngine
    from mmr1_mega.rollout.sglang_server import SGLangServer

    server = SGLangServer(model_dir, port=port, external=True)
    return SGLangEngine([server], colocated=True, timeout_s=120, request_timeout_s=300)


def sync_into_real_engine(
    kind: str,
    server_model_dir: str,
    port: int,
    actor_dir: str,
    out_root: str,
    batch: dict,
    requests: list,
    layouts: list[str],
) -> dict:
    """For each layout: load the actor from actor_dir (other weights than the server's), sync it into the real
    engine, export it, generate greedily; one real optimizer step; sync, export and generate again. Rank 0
    returns the engine's outputs (token ids and logprobs) per layout and version."""
    hf_config = AutoConfig.from_pretrained(actor_dir)
    results = {}
    for name in layouts:
        tp, pp = LAYOUTS[name]
        initialize_model_parallel(tp, pp, seed=1)
        model, family = build_model(hf_config)
        table = family.weight_table(hf_config)
        load_hf_weights(model, actor_dir, table)
        ddp = DistributedDataParallel(
            model.config,
            DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
            model,
        )
        model.config.finalize_model_grads_func = finalize_model_grads
        model.config.no_sync_func = ddp.no_sync
        optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=1e-2, clip_grad=0.0, params_dtype=torch.float32), [ddp]
        )
        rank0 = dist.get_rank() == 0
        engine = _client(kind, server_model_dir, port) if rank0 else None
        out = {}
        for version in ("v0", "v1"):
            if version == "v1":
                _train_step(ddp, optimizer, hf_config, batch)
            # 0.05 MiB buckets: several per stage, the embedding and LM head alone
            out[f"sync_{version}"] = sync_weights(ddp, table, engine, bucket_mb=0.05)
            export_hf(ddp, table, f"{out_root}/{name}/{version}", actor_dir)
            if rank0:
                outs = engine.generate(requests)
                out[version] = [(o[0].token_ids, o[0].logprobs) for o in outs]
        results[name] = out if rank0 else {}
        dist.barrier()
    return results
