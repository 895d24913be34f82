"""Code that runs inside the ranks of the weight-sync tests (forked by mmr1_mega.distributed.launch)."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402
from megatron.core.distributed import (  # noqa: E402
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,  # noqa: E402
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from mmr1_mega.distributed.init import initialize_model_parallel  # noqa: E402
from mmr1_mega.models.build import build_model  # noqa: E402
from mmr1_mega.models.tiny import megatron_inputs  # noqa: E402
from mmr1_mega.models.weights import export_hf, load_hf_weights  # noqa: E402
from mmr1_mega.rollout.local import LocalEngine  # noqa: E402
from mmr1_mega.rollout.protocol import GenerationRequest  # noqa: E402
from mmr1_mega.sync.sync import sync_weights, verify_weights  # noqa: E402

LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2), "tp2pp2": (2, 2)}
CORRUPTED = "model.layers.1.mlp.down_proj.weight"


def _train_step(ddp, optimizer, hf_config, batch) -> None:
    """One real megatron step: forward-backward over the pipeline schedule, then Adam."""
    inputs = megatron_inputs(hf_config, batch)
    labels = torch.roll(batch["input_ids"], -1, dims=1)
    mask = batch["attention_mask"].float()

    def forward_step(data_iterator, model):
        out = model(**inputs, labels=labels)
        return out, lambda o: ((o * mask).sum() / mask.sum(), {})

    b, s = batch["input_ids"].shape
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[ddp],
        num_microbatches=1,
        seq_length=s,
        micro_batch_size=b,
        forward_only=False,
    )
    ok, _, _ = optimizer.step()
    assert ok, "optimizer step was skipped"


def build_actor(hf_config, actor_dir: str):
    """(DDP-wrapped model, weight table, Adam optimizer) of the actor in actor_dir, in the current
    model-parallel layout: what every sync worker trains and syncs."""
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
    return ddp, table, optimizer


def _greedy(engine: LocalEngine, requests: list[GenerationRequest]) -> list[list[int]]:
    return [o[0].token_ids for o in engine.generate(requests)]


def sync_into_local_engine(
    actor_dir: str,
    engine_dir: str,
    out_root: str,
    batch: dict,
    requests: list,
    layouts: list[str],
    fp8_weights=None,
) -> dict:
    """For each layout: load the actor from actor_dir, make a local engine (rank 0) from engine_dir
    (other weights), sync, export, train one step, sync with verify, export again, then corrupt one
    engine tensor and verify. Rank 0 returns the engine's states, greedy outputs, metrics and reports.
    fp8_weights (quant.fp8.FP8Weights): the engine is the FP8 stand-in of its format and every sync sends
    FP8 weights made by it."""
    hf_config = AutoConfig.from_pretrained(actor_dir)
    quantize = fp8_weights.quantize if fp8_weights is not None else None
    results = {}
    for name in layouts:
        tp, pp = LAYOUTS[name]
        initialize_model_parallel(tp, pp, seed=1)
        ddp, table, optimizer = build_actor(hf_config, actor_dir)
        rank0 = dist.get_rank() == 0
        engine = LocalEngine(engine_dir, fp8=fp8_weights and fp8_weights.fmt) if rank0 else None
        out = {"engine_before": engine.state_dict_hf() if rank0 else None}
        # 0.02 MiB buckets: several per stage, and the 32 KiB embedding / lm_head travel alone
        out["metrics0"] = sync_weights(ddp, table, engine, bucket_mb=0.02, quantize=quantize)
        export_hf(ddp, table, f"{out_root}/{name}/v0", actor_dir)
        if rank0:
            out["state0"], out["greedy0"] = engine.state_dict_hf(), _greedy(engine, requests)
        _train_step(ddp, optimizer, hf_config, batch)
        out["metrics1"] = sync_weights(ddp, table, engine, bucket_mb=0.02, verify=True, quantize=quantize)
        export_hf(ddp, table, f"{out_root}/{name}/v1", actor_dir)
        if rank0:
            out["state1"], out["greedy1"] = engine.state_dict_hf(), _greedy(engine, requests)
            with torch.no_grad():  # what the engine holds: the FP8 codes of an FP8 engine
                held = engine._fp8_tensors.get(CORRUPTED, engine._params[CORRUPTED])
                held.view(-1).view(torch.uint8)[0] += 1
        out["corrupt_report"] = verify_weights(ddp, table, engine, quantize=quantize)
        out["pp_size"] = ps.get_pipeline_model_parallel_world_size()
        results[name] = out if rank0 else {"metrics1": out["metrics1"]}
        dist.barrier()
    return results


FANOUT_LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2), "tp2pp2": (2, 2), "dp4": (1, 1)}


def sync_fanout_into_node_engines(
    actor_dir: str, engine_dir: str, out_root: str, batch: dict, layouts: list[str]
):
    """Ranks laid out as 2 nodes x 2 (launch nodes=2): each node's local rank 0 holds a local engine made
    from engine_dir (other weights), as an engine placed per node. For each layout: fan-out sync with verify,
    export, one training step, again. Node leaders return their engine's state after each sync."""
    hf_config = AutoConfig.from_pretrained(actor_dir)
    holder = os.environ["LOCAL_RANK"] == "0"
    results = {}
    for name in layouts:
        tp, pp = FANOUT_LAYOUTS[name]
        initialize_model_parallel(tp, pp, seed=1)
        ddp, table, optimizer = build_actor(hf_config, actor_dir)
        engine = LocalEngine(engine_dir) if holder else None
        out = {"metrics0": sync_weights(ddp, table, engine, bucket_mb=0.02, verify=True, fanout=True)}
        export_hf(ddp, table, f"{out_root}/{name}/v0", actor_dir)
        out["state0"] = engine.state_dict_hf() if holder else None
        _train_step(ddp, optimizer, hf_config, batch)
        out["metrics1"] = sync_weights(ddp, table, engine, bucket_mb=0.02, verify=True, fanout=True)
        export_hf(ddp, table, f"{out_root}/{name}/v1", actor_dir)
        out["state1"] = engine.state_dict_hf() if holder else None
        results[name] = out
        dist.barrier()
        ps.destroy_model_parallel()
    return {"rank": dist.get_rank(), "holder": holder, **results}
