"""Rank-0 VAS with a broadcast of the drawn indices, so every rank reads the same prompts each step.

Drawing (and the VPS refresh it may start, N rollouts over the whole pool: possibly the longest thing a
run does) is a rank-0-only phase: the other ranks wait for it on the host group, under the rule of
mmr1_mega/distributed/comm.py, and get rank 0's error if the refresh fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from mmr1_mega.distributed.comm import rank0_phase
from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.controller import VarianceAwareSampler
from mmr1_mega.vas.outcomes import RolloutOutcomes
from mmr1_mega.vas.refresh import ScoreFn


class DistributedVAS:
    """VAS whose state lives on rank 0 only; every rank calls next_indices each step, in the same order.

    Only rank 0 refreshes (calls score_fn), observes and holds VPS; other ranks only receive indices.
    """

    def __init__(self, pool_size: int, cfg: VASConfig) -> None:
        """Takes: pool_size, cfg. Raises RuntimeError if torch.distributed is not initialised."""
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "DistributedVAS needs torch.distributed initialised: call init_process_group first"
            )
        self.vas = VarianceAwareSampler(pool_size, cfg) if dist.get_rank() == 0 else None

    def next_indices(self, batch_size: int, score_fn: ScoreFn | None = None) -> torch.Tensor:
        """Indices of the next batch (int64 [batch_size]) on every rank; rank 0 refreshes first when due.

        score_fn: the scoring callable, used on rank 0 only (others may pass it or None).
        Raises whatever the refresh raised (rank 0), Rank0PhaseError (the other ranks).
        """

        def draw():
            return np.asarray(self.vas.next_indices(batch_size, score_fn), dtype=np.int64)

        return torch.as_tensor(rank0_phase("VAS sample / refresh", draw))

    def extra_indices(self, count: int) -> np.ndarray:
        """Rank 0 only (inside a rank-0 phase): count more indices from the current mixture, no step
        counted (VarianceAwareSampler.extra_indices)."""
        if self.vas is None:
            raise RuntimeError("extra_indices is drawn on rank 0 only")
        return self.vas.extra_indices(count)

    def observe(self, indices: Sequence[int], outcomes: Sequence[RolloutOutcomes]) -> None:
        """Online update on rank 0; a no-op elsewhere."""
        if self.vas is not None:
            self.vas.observe(indices, outcomes)

    def metrics(self) -> dict[str, float]:
        """VAS metrics on rank 0, {} elsewhere."""
        return self.vas.metrics() if self.vas is not None else {}

    def state_dict(self) -> dict:
        """The VAS state on rank 0, {} elsewhere (checkpoint it from rank 0)."""
        return self.vas.state_dict() if self.vas is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore on rank 0; other ranks ignore the argument (they hold no VAS state)."""
        if self.vas is not None:
            self.vas.load_state_dict(state)
