"""Runs inside the ranks of the actor tests."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from mmr1_mega.actor.actor import MegatronActor  # noqa: E402
from mmr1_mega.config import OptimConfig  # noqa: E402
from mmr1_mega.distributed.init import initialize_model_parallel  # noqa: E402

# name -> (tp, pp, sp, distributed optimizer, micro batch size, max tokens per micro-batch, packed)
LAYOUTS = {
    "tp2-dp2": (2, 1, False, False, 2, 0, False),
    "pp2-dp2": (1, 2, False, False, 1, 0, False),
    "tp1-dp4-distopt": (1, 1, False, True, 1, 0, False),
    "tp2pp2-sp": (2, 2, True, False, 2, 0, False),
    "tp2-dp2-distopt": (2, 1, False, True, 1, 0, False),
    "tp1": (1, 1, False, False, 2, 0, False),
    # token budgets (the test batch's samples are 9-22 tokens: 2-3 micro-batches per replica), packed or not
    "tp2-sp-dp2-packed-budget": (2, 1, True, False, 0, 32, True),
    "pp2-dp2-packed-budget": (1, 2, False, False, 0, 24, True),
    "tp2pp2-sp-budget": (2, 2, True, False, 0, 40, False),
    "tp2-sp-packed": (2, 1, True, False, 0, 64, True),
    "pp2-packed": (1, 2, False, False, 0, 40, True),
}


def _make_actor(
    hf_config, hf_dir: str, layout: str, optim_kwargs: dict, total_steps: int = 1
) -> MegatronActor:
    """Initialise the layout's process groups and build an fp32 actor for it."""
    tp, pp, sp, distopt, mbs, max_tokens, packed = LAYOUTS[layout]
    initialize_model_parallel(tp, pp, seed=3)
    return MegatronActor(
        hf_config,
        hf_dir,
        dtype="fp32",
        sequence_parallel=sp,
        optim=OptimConfig(**optim_kwargs),
        use_distributed_optimizer=distopt,
        micro_batch_size=mbs or 1,
        max_tokens_per_micro_batch=max_tokens,
        pack_sequences=packed,
        total_steps=total_steps,
    )


def actor_step(
    hf_dir: str, batch, loss_cfg, optim_kwargs: dict, layouts: list[str], temperature: float
) -> dict:
    """Per layout: logprobs of the whole batch, the metrics of one GRPO step, and the updated weights."""
    hf_config = AutoConfig.from_pretrained(hf_dir)
    results = {}
    for name in layouts:
        actor = _make_actor(hf_config, hf_dir, name, optim_kwargs)
        dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        mine = list(range(dp_rank, len(batch), dp))
        local = batch.select(mine)
        logp = actor.logprobs(local, temperature)
        metrics = actor.train_step(local, loss_cfg, temperature)
        weights = dict(actor.hf_weights())
        out = {"metrics": metrics}
        if ps.get_tensor_model_parallel_rank() == 0 and logp is not None:
            out["logp"] = (mine, logp)
        if ps.get_tensor_model_parallel_rank() == 0 and dp_rank == 0:
            out["weights"] = weights
        results[name] = out
        dist.barrier()
    return results


def steps_with_checkpoint(hf_dir, batches, loss_cfg, optim_kwargs, layout, ckpt_dir, save_after, start_from):
    """Run GRPO steps on `batches`; save the actor state after step `save_after` (if not None) or first
    load it from ckpt_dir and run only batches[start_from:]. Returns per-step losses and final weights."""
    from mmr1_mega.actor.state import load_actor_state, save_actor_state

    hf_config = AutoConfig.from_pretrained(hf_dir)
    actor = _make_actor(hf_config, hf_dir, layout, optim_kwargs, total_steps=len(batches))
    if start_from:
        load_actor_state(actor, ckpt_dir)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    losses = []
    for i, batch in enumerate(batches):
        if i < start_from:
            continue
        local = batch.select(list(range(dp_rank, len(batch), dp)))
        m = actor.train_step(local, loss_cfg)
        losses.append((m["loss"], m["grad_norm"], m["lr"]))
        if save_after is not None and i == save_after:
            if dist.get_rank() == 0:
                os.makedirs(ckpt_dir, exist_ok=True)
            dist.barrier()
            save_actor_state(actor, ckpt_dir)
    weights = dict(actor.hf_weights())
    keep = ps.get_tensor_model_parallel_rank() == 0 and dp_rank == 0
    return {"losses": losses, "weights": weights if keep else {}}


def nonfinite_then_finite(hf_dir, bad_batch, good_batch, loss_cfg, optim_kwargs):
    """A step whose loss is NaN must leave weights and optimizer untouched; the next good step updates."""
    actor = _make_actor(AutoConfig.from_pretrained(hf_dir), hf_dir, "tp2-dp2", optim_kwargs)
    before = {k: v.clone() for k, v in actor.hf_weights()}
    bad = actor.train_step(bad_batch, loss_cfg)
    after_bad = {k: v.clone() for k, v in actor.hf_weights()}
    opt_state_empty = all(len(s) == 0 for s in actor.optimizer.chained_optimizers[0].optimizer.state.values())
    good = actor.train_step(good_batch, loss_cfg)
    after_good = dict(actor.hf_weights())
    return {
        "bad": bad,
        "good": good,
        "unchanged": all(torch.equal(before[k], after_bad[k]) for k in before),
        "changed_after_good": any(not torch.equal(before[k], after_good[k]) for k in before),
        "opt_state_empty_after_bad": opt_state_empty,
    }


def checkpoint_when_rank0_cannot_write(hf_dir: str, out_dir: str, optim_kwargs: dict) -> dict:
    """Save a checkpoint at step 1, then one at step 2 whose trainer state rank 0 cannot write (it does not
    pickle, as a full disk would fail the same write). Returns what each rank saw of the second save."""
    import time

    from mmr1_mega.trainer.checkpoint import complete_checkpoints, save_checkpoint

    actor = _make_actor(AutoConfig.from_pretrained(hf_dir), hf_dir, "tp1", optim_kwargs)
    save_checkpoint(out_dir, 1, actor, {"vas": {}}, keep_last=2)
    start = time.monotonic()
    try:
        save_checkpoint(out_dir, 2, actor, {"vas": {"not picklable": lambda: 0}}, keep_last=2)
        error = None
    except Exception as e:  # noqa: BLE001
        error = f"{type(e).__name__}: {e}"
    return {
        "error": error,
        "seconds": time.monotonic() - start,
        "complete": [p.name for p in complete_checkpoints(out_dir)],
    }


def steps_with_offload_between(hf_dir: str, batches, loss_cfg, optim_kwargs, layout: str, offload: bool):
    """GRPO steps with (or without) the colocation hand-off (offload, onload) before each; returns the
    losses and the final weights of the first TP / DP rank."""
    actor = _make_actor(AutoConfig.from_pretrained(hf_dir), hf_dir, layout, optim_kwargs, len(batches))
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    losses = []
    for batch in batches:
        if offload:
            actor.offload()
            grads_freed = all(b.grad_data.untyped_storage().size() == 0 for b in actor.model.buffers)
            actor.onload()
            assert grads_freed, "offload() did not free the gradient buffers"
        m = actor.train_step(batch.select(list(range(dp_rank, len(batch), dp))), loss_cfg)
        losses.append(m["loss"])
    weights = dict(actor.hf_weights())
    keep = ps.get_tensor_model_parallel_rank() == 0 and dp_rank == 0
    return {"losses": losses, "weights": weights if keep else {}}


def actor_step_per_loss(
    hf_dir: str, batch, loss_cfgs: dict, optim_kwargs: dict, layouts, temperature
) -> dict:
    """actor_step for each named loss configuration (one process start for all)."""
    return {
        name: actor_step(hf_dir, batch, cfg, optim_kwargs, layouts, temperature)
        for name, cfg in loss_cfgs.items()
    }
