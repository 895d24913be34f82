"""Trainer checkpoints: actor state (megatron distributed checkpoint, reshardable) + trainer state.

    <output_dir>/checkpoints/step_000012/        complete (has COMPLETE)
    <output_dir>/checkpoints/step_000014.tmp/    being written, or left by a killed run: ignored, replaced

A checkpoint is written under a temporary name and renamed once every rank has finished, so a run killed
at any moment leaves the previous checkpoints intact. trainer_state.pt holds the step, the VAS sampler
state, the RNG states of every rank and the resolved config; `--resume auto` picks the newest complete one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mmr1_mega.actor.state import load_actor_state, save_actor_state
from mmr1_mega.distributed.comm import host_group, rank0_phase
from mmr1_mega.models.hf_io import CheckpointError

COMPLETE = "COMPLETE"
STATE = "trainer_state.pt"


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / COMPLETE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """'' -> None; 'auto' -> newest complete checkpoint or None; a path -> that checkpoint (checked)."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no {COMPLETE} marker): pick another or use auto"
        )
    return path


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir, step: int, actor, trainer_state: dict, keep_last: int) -> Path:
    """Collective. trainer_state (rank 0's) is saved with every rank's RNG state added. Returns the path."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"

    def prepare():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "actor").mkdir(parents=True)

    rank0_phase("checkpoint: prepare", prepare)
    save_actor_state(actor, tmp / "actor")
    rngs = [None] * dist.get_world_size()
    dist.all_gather_object(rngs, rng_state(), group=host_group())

    def finish():  # a failure here (disk full) is raised on every rank, and leaves the last checkpoints
        torch.save({**trainer_state, "step": step, "rng": rngs}, tmp / STATE)
        (tmp / COMPLETE).write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    rank0_phase("checkpoint: trainer state", finish)
    return final


def read_trainer_state(path: str | os.PathLike) -> dict:
    """The trainer state of a complete checkpoint (step, VAS state, wandb run id, RNG states)."""
    return torch.load(Path(path) / STATE, weights_only=False)


def load_checkpoint(path: str | os.PathLike, actor) -> dict:
    """Collective: restore the actor state and this rank's RNG; returns the trainer state (all ranks)."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint")
    load_actor_state(actor, path / "actor")
    state = read_trainer_state(path)
    rngs = state.get("rng") or []
    rank = dist.get_rank()
    if rank < len(rngs) and len(rngs) == dist.get_world_size():
        set_rng_state(rngs[rank])
    return state
