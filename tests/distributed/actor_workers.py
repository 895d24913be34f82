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

# name -> (tp, pp, sp, distributed optimizer, micro batch size)
LAYOUTS = {
    "tp2-dp2": (2, 1, False, False, 2),
    "pp2-dp2": (1, 2, False, False, 1),
    "tp1-dp4-distopt": (1, 1, False, True, 1),
    "tp2pp2-sp": (2, 2, True, False, 2),
}


def actor_step(hf_dir: str, batch, loss_cfg, optim_kwargs: dict, layouts: list[str], temperature: float) -> dict:
    """Per layout: logprobs of the whole batch, the metrics of one GRPO step, and the updated weights."""
    hf_config = AutoConfig.from_pretrained(hf_dir)
    results = {}
    for name in layouts:
        tp, pp, sp, distopt, mbs = LAYOUTS[name]
        initialize_model_parallel(tp, pp, seed=3)
        actor = MegatronActor(
            hf_config,
            hf_dir,
            dtype="fp32",
            sequence_parallel=sp,
            optim=OptimConfig(**optim_kwargs),
            use_distributed_optimizer=distopt,
            micro_batch_size=mbs,
        )
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
