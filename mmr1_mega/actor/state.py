"""Saving and loading the actor's full training state (model, optimizer, LR schedule) as one megatron
distributed checkpoint, reshardable: saved at one TP / PP / DP layout, loaded at another."""

from __future__ import annotations

import contextlib
import os

from megatron.core import dist_checkpointing

from mmr1_mega.models.hf_io import CheckpointError
from mmr1_mega.models.weights import unwrap

# the distributed optimizer's state in model space, so it can be loaded at another layout
_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _prime_optimizer_state(optimizer) -> list:
    """Give an untouched torch Adam the state entries a loaded one has.

    Without apex / transformer-engine, megatron's DistributedOptimizer.state_dict() reads the per-param
    'step' (distrib_optimizer.py, DistributedOptimizer.state_dict: 0.16.1 line 641, 0.19.2 line 838), and its init_state_fn creates only exp_avg / exp_avg_sq; so a
    freshly built optimizer cannot describe the state it is about to load. The values are overwritten
    by the load. Returns the primed torch optimizers: their state must be emptied again before
    megatron's load_state_dict, which only allocates state that does not exist yet.
    """
    import torch

    primed = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        init = getattr(opt, "init_state_fn", None)
        if inner is None or init is None or any(len(s) for s in inner.state.values()):
            continue
        init(inner, getattr(opt, "config", None))
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p].setdefault("step", torch.tensor(0.0))
        primed.append(inner)
    return primed


@contextlib.contextmanager
def _step_kept_out_of_param_state():
    """Without apex / transformer-engine, megatron's DistributedOptimizer.load_state_dict puts the torch
    Adam 'step' into every parameter's state (distrib_optimizer.py load_state_dict: 0.16.1 line 825,
    0.19.2 line 1032) and then copies each state key from the checkpoint's per-parameter tensors
    (_set_main_param_and_optimizer_states: 0.16.1 line 940, 0.19.2 line 1225), which hold no 'step' (it lives in the param
    groups): KeyError. During the load, copy only the keys the checkpoint has."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8 or "step" in tensors:
            return original(self, model_param, tensors)
        main_param.copy_(tensors["param"])
        for key, value in self.optimizer.state[main_param].items():
            if key in tensors:
                value.copy_(tensors[key])

    DistributedOptimizer._set_main_param_and_optimizer_states = set_states
    try:
        yield
    finally:
        DistributedOptimizer._set_main_param_and_optimizer_states = original


def _unshare_adam_steps(optimizer) -> None:
    """megatron's non-apex DistributedOptimizer load gives every parameter the SAME 'step' tensor
    (distrib_optimizer.py load_state_dict: 0.16.1 lines 819-825, 0.19.2 lines 1026-1032) and torch Adam keeps it as is, then increments it once per parameter per
    step, which corrupts the bias correction after a resume. Give each parameter its own copy."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for state in inner.state.values():
            if "step" in state and hasattr(state["step"], "clone"):
                state["step"] = state["step"].clone()


def _sharded(actor, is_loading: bool) -> dict:
    model_sd = unwrap(actor.model).sharded_state_dict()
    state = {"model": model_sd}
    if actor.train_mode:
        state["optimizer"] = actor.optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata=_OPTIM_METADATA
        )
        state["scheduler"] = actor.scheduler.state_dict()
    return state


def save_actor_state(actor, ckpt_dir: str | os.PathLike) -> None:
    """Collective over all ranks: write model, optimizer and scheduler state into ckpt_dir (must exist)."""
    dist_checkpointing.save(_sharded(actor, is_loading=False), str(ckpt_dir))


def load_actor_state(actor, ckpt_dir: str | os.PathLike, load_optimizer: bool = True) -> None:
    """Collective: restore what save_actor_state wrote, at the current layout.

    Raises CheckpointError when the directory is not such a checkpoint.
    """
    if not os.path.isfile(os.path.join(ckpt_dir, "metadata.json")):
        raise CheckpointError(f"{ckpt_dir} is not a megatron distributed checkpoint (no metadata.json)")
    primed = _prime_optimizer_state(actor.optimizer) if actor.train_mode and load_optimizer else []
    wanted = _sharded(actor, is_loading=True)
    if not load_optimizer:
        wanted = {"model": wanted["model"]}
    state = dist_checkpointing.load(wanted, str(ckpt_dir))
    module = unwrap(actor.model)
    missing, unexpected = module.load_state_dict(state["model"], strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt_dir}: model state does not match: missing {missing[:5]} unexpected {unexpected[:5]}"
        )
    if load_optimizer and actor.train_mode:
        for inner in primed:
            inner.state.clear()
        with _step_kept_out_of_param_state():
            actor.optimizer.load_state_dict(state["optimizer"])
        _unshare_adam_steps(actor.optimizer)
        actor.scheduler.load_state_dict(state["scheduler"])
