"""Code that runs inside the ranks of the real-engine sync test (forked by mmr1_mega.distributed.launch)."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch.distributed as dist  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from mmr1_mega.distributed.init import initialize_model_parallel  # noqa: E402
from mmr1_mega.models.weights import export_hf  # noqa: E402
from mmr1_mega.sync.sync import sync_weights  # noqa: E402
from tests.distributed.sync_workers import LAYOUTS, _train_step, build_actor  # noqa: E402


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
        ddp, table, optimizer = build_actor(hf_config, actor_dir)
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


def per_node_engines(
    python: str,
    model_dir: str,
    actor_dir: str,
    out_root: str,
    batch: dict,
    requests: list,
    layouts: list[str],
):
    """4 ranks as 2 nodes x 2 (launch nodes=2), engines placed per node by the trainer's own code: each node's
    local rank 0 starts a real vLLM server and feeds it (fan-out sync); rank 0 generates through a client of
    both. Per layout and version: every server's own weight checksums and rank 0's greedy outputs. At the end
    node 1's server is killed and rank 0 generates again."""
    import requests as http
    from megatron.core import parallel_state as ps

    from mmr1_mega.config import Config
    from mmr1_mega.distributed.comm import leaders_phase
    from mmr1_mega.rollout.factory import make_client
    from mmr1_mega.trainer.setup import start_node_engines

    os.environ["MMR1_NODE_HOST"] = "127.0.0.1"  # both "nodes" are this machine
    cfg = Config()
    cfg.model.hf_path = model_dir
    cfg.rollout.engine, cfg.rollout.num_engines, cfg.rollout.placement = "vllm", 1, "per_node"
    cfg.rollout.server_launcher = [python, "-m", "vllm.entrypoints.openai.api_server"]
    cfg.rollout.server_args = ["--max-model-len", "1024"]
    cfg.rollout.server_timeout_s = 300
    hf_config = AutoConfig.from_pretrained(actor_dir)
    initialize_model_parallel(1, 1)
    node_engine, addresses = start_node_engines(cfg)
    rank0 = dist.get_rank() == 0
    client = make_client(cfg.rollout, addresses) if rank0 else None
    out = {"holder": node_engine is not None, "addresses": addresses}
    try:
        for name in layouts:
            ps.destroy_model_parallel()
            tp, pp = LAYOUTS[name]
            initialize_model_parallel(tp, pp, seed=1)
            ddp, table, optimizer = build_actor(hf_config, actor_dir)
            for version in ("v0", "v1"):
                if version == "v1":
                    _train_step(ddp, optimizer, hf_config, batch)
                sync = sync_weights(ddp, table, node_engine, bucket_mb=0.05, fanout=True)
                export_hf(ddp, table, f"{out_root}/{name}/{version}", actor_dir)

                def checksums():
                    url = node_engine.servers[0].url + "/weight_checker"
                    return http.post(url, json={"action": "checksum"}, timeout=120).json()["checksums"]

                sums = leaders_phase("checksums", checksums, node_engine is not None)
                if rank0:
                    out[(name, version)] = {
                        "mode": sync["mode"],
                        "checksums": [s for s in sums if s is not None],
                        "greedy": [(o[0].token_ids, o[0].logprobs) for o in client.generate(requests)],
                    }
                dist.barrier()
        # node 1's engine dies; rank 0's rollouts go to node 0's
        if node_engine is not None and dist.get_rank() != 0:
            node_engine.servers[0].stop()
        dist.barrier()
        if rank0:
            out["after_kill"] = [(o[0].token_ids, o[0].logprobs) for o in client.generate(requests * 2)]
            out["down"] = client.mark_synced()
    finally:
        dist.barrier()
        if node_engine is not None:
            node_engine.shutdown()
    return out


def fp8_syncs_into_vllm(
    server_model_dir: str, port: int, actor_dirs: list[str], layouts: list[str], requests: list, input_scales
) -> list:
    """Sync FP8 weights (modelopt format, the server's activation scales) from an actor of each (actor_dir,
    layout) in turn into the real vLLM server, generating greedily after each; rank 0 returns the outputs
    (token ids, log-probs) and sync metrics per step."""
    from mmr1_mega.quant.fp8 import FP8Weights

    weights = FP8Weights("modelopt", input_scales)
    outs = []
    for actor_dir, name in zip(actor_dirs, layouts):
        tp, pp = LAYOUTS[name]
        initialize_model_parallel(tp, pp, seed=1)
        ddp, table, _ = build_actor(AutoConfig.from_pretrained(actor_dir), actor_dir)
        rank0 = dist.get_rank() == 0
        engine = _client("vllm", server_model_dir, port) if rank0 else None
        metrics = sync_weights(ddp, table, engine, bucket_mb=0.05, quantize=weights.quantize)
        if rank0:
            outs.append(([(o[0].token_ids, o[0].logprobs) for o in engine.generate(requests)], metrics))
        dist.barrier()
    return outs
