"""Rank-0 VAS with a broadcast of the drawn indices, so every rank reads the same prompts each step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.controller import VarianceAwareSampler
from mmr1_mega.vas.outcomes import RolloutOutcomes
from mmr1_mega.vas.refresh import ScoreFn


def broadcast_indices(
    indices: np.ndarray | None, batch_size: int, src: int = 0, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Send rank src's indices to every rank of the group as an int64 CPU tensor.

    Takes:
        indices: int64 [B] on rank src, ignored (None) elsewhere.
        batch_size: B, the same on every rank.
        src: global rank that holds the indices.
        group: process group (default: the world); use a gloo group or CPU-capable backend.
    Returns:
        int64 tensor [B], identical on every rank.
    Raises:
        ValueError: on rank src if indices do not have batch_size entries.
    """
    if dist.get_rank() == src:
        if indices is None or len(indices) != batch_size:
            raise ValueError(
                f"rank {src} must broadcast {batch_size} indices, got {None if indices is None else len(indices)}"
            )
        buf = torch.as_tensor(np.ascontiguousarray(indices, dtype=np.int64))
    else:
        buf = torch.empty(batch_size, dtype=torch.int64)
    dist.broadcast(buf, src=src, group=group)
    return buf


class DistributedVAS:
    """VAS whose state lives on rank src only; every rank calls next_indices each step, in the same order.

    Only rank src refreshes (calls score_fn), observes and holds VPS; other ranks only receive indices.
    """

    def __init__(
        self, pool_size: int, cfg: VASConfig, group: dist.ProcessGroup | None = None, src: int = 0
    ) -> None:
        """Takes: pool_size, cfg, group (default world), src (global rank owning the state).

        Raises:
            RuntimeError: if torch.distributed is not initialised.
        """
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "DistributedVAS needs torch.distributed initialised: call init_process_group first"
            )
        self.group = group
        self.src = src
        self.is_src = dist.get_rank() == src
        self.vas = VarianceAwareSampler(pool_size, cfg) if self.is_src else None

    def next_indices(self, batch_size: int, score_fn: ScoreFn | None = None) -> torch.Tensor:
        """Indices of the next batch on every rank; rank src refreshes first when due.

        Takes:
            batch_size: B, the same on every rank.
            score_fn: scoring callable; used on rank src only (others may pass it or None).
        Returns:
            int64 tensor [B].
        """
        local = self.vas.next_indices(batch_size, score_fn) if self.vas is not None else None
        return broadcast_indices(local, batch_size, self.src, self.group)

    def observe(self, indices: Sequence[int], outcomes: Sequence[RolloutOutcomes]) -> None:
        """Online update on rank src; a no-op elsewhere."""
        if self.vas is not None:
            self.vas.observe(indices, outcomes)

    def metrics(self) -> dict[str, float]:
        """VAS metrics on rank src, {} elsewhere."""
        return self.vas.metrics() if self.vas is not None else {}

    def state_dict(self) -> dict:
        """The VAS state on rank src, {} elsewhere (checkpoint it from rank src)."""
        return self.vas.state_dict() if self.vas is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore on rank src; other ranks ignore the argument (they hold no VAS state)."""
        if self.vas is not None:
            self.vas.load_state_dict(state)
