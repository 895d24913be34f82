"""VarianceAwareSampler: the VAS loop of one process (MMR1 Algorithm 1): refresh when due, then draw."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.metrics import vas_histograms, vas_metrics
from mmr1_mega.vas.outcomes import RolloutOutcomes
from mmr1_mega.vas.refresh import ScoreFn, refresh_due, rescore, select_stalest
from mmr1_mega.vas.sampler import MixedSampler
from mmr1_mega.vas.scores import score_prompts
from mmr1_mega.vas.table import VPSTable

STATE_FORMAT = "mmr1_mega.vas/1"


class VarianceAwareSampler:
    """Owns the VPS table and the mixed sampler of a pool of prompts; one call per training step.

    With cfg.enabled False it never refreshes and draws plain shuffled batches (lambda treated as 0).
    """

    def __init__(self, pool_size: int, cfg: VASConfig) -> None:
        """Takes: pool_size (prompts in the training set), cfg. Raises: ValueError on a bad config or empty pool."""
        cfg.validate()
        self.cfg = cfg
        ratio = cfg.mixture_ratio if cfg.enabled else 0.0
        self.sampler = MixedSampler(pool_size, ratio, cfg.seed)
        self.table = VPSTable(pool_size, cfg)
        self.step = 0
        self.last_refresh_step: int | None = None
        self.refreshes = 0
        self.last_refresh_s = 0.0
        self.last_weighted_share = 0.0
        self.last_batch_vps_mean = 0.0

    @property
    def pool_size(self) -> int:
        return self.sampler.pool_size

    def refresh_due(self) -> bool:
        """True if the next call of next_indices will re-score prompts first."""
        return (
            self.cfg.enabled
            and self.cfg.refresh
            and refresh_due(self.step, self.last_refresh_step, self.cfg.update_every_steps)
        )

    def refresh(self, score_fn: ScoreFn) -> None:
        """Re-score the configured share of the pool (stalest first) from fresh rollouts and update VPS.

        Takes:
            score_fn: prompt indices -> RolloutOutcomes per index (see refresh.rescore).
        """
        start = time.perf_counter()
        indices = select_stalest(self.table.last_scored_step, self.cfg.refresh_share)
        scores = rescore(indices, score_fn, self.cfg)
        self.table.apply_refresh(indices, scores, self.step)
        self.sampler.set_weights(self.table.vps)
        self.last_refresh_step = self.step
        self.refreshes += 1
        self.last_refresh_s = time.perf_counter() - start

    def next_indices(self, batch_size: int, score_fn: ScoreFn | None = None) -> np.ndarray:
        """Prompt indices of the next training batch; refreshes VPS first when due.

        Takes:
            batch_size: B >= 1.
            score_fn: the scoring callable, needed when a refresh is due.
        Returns:
            int64 [B].
        Raises:
            ValueError: if a refresh is due and score_fn is None, or batch_size < 1.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: the VAS sampler needs batches of at least one prompt")
        if self.refresh_due():
            if score_fn is None:
                raise ValueError(
                    f"a VAS refresh is due at step {self.step} but no scoring callable was given: pass score_fn"
                )
            self.refresh(score_fn)
        indices, from_weights = self.sampler.draw(batch_size)
        self.last_weighted_share = float(from_weights.mean())
        self.last_batch_vps_mean = float(self.table.vps[indices].mean())
        self.step += 1
        return indices

    def extra_indices(self, count: int) -> np.ndarray:
        """count more prompt indices from the current mixture (VPS-weighted share and uniform share),
        without counting a step or refreshing: dynamic sampling's over-sampling within a step."""
        if count < 1:
            raise ValueError(f"count={count}: draw at least one prompt")
        return self.sampler.draw(count)[0]

    def observe(self, indices: Sequence[int], outcomes: Sequence[RolloutOutcomes]) -> None:
        """Online update (cfg.online_update, beyond the paper): fold the batch's rollouts into VPS.

        No-op when online_update is off, or before the first refresh when refreshes are on (vas.refresh=false:
        from the first batch, VPS renormalised over every prompt observed so far).

        Takes:
            indices: the batch's prompt indices; outcomes: one RolloutOutcomes per index.
        Raises:
            ValueError: if the lengths differ.
        """
        if len(indices) != len(outcomes):
            raise ValueError(
                f"observe got {len(indices)} indices but {len(outcomes)} outcomes: pass one per prompt"
            )
        if not (self.cfg.enabled and self.cfg.online_update):
            return
        if self.cfg.refresh and self.last_refresh_step is None:
            return
        self.table.fold_online(
            np.asarray(indices, dtype=np.int64),
            score_prompts(outcomes, self.cfg),
            renormalise=not self.cfg.refresh,
        )
        self.sampler.set_weights(self.table.vps)

    def metrics(self) -> dict[str, float]:
        """Scalars for the logger (see metrics.vas_metrics)."""
        return vas_metrics(self)

    def histograms(self, bins: int = 10) -> dict[str, np.ndarray]:
        """Histograms for the logger / Figure 3 (see metrics.vas_histograms)."""
        return vas_histograms(self.table, bins)

    def state_dict(self) -> dict:
        """Everything needed to continue the exact index sequence; plain tensors / Python values.

        The VPS history per refresh (for tools/plot_vas.py) is under state["table"]["history"].
        """
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "last_refresh_step": self.last_refresh_step,
            "refreshes": self.refreshes,
            "sampler": self.sampler.state_dict(),
            "table": self.table.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict saved by a sampler over the same pool.

        Raises:
            ValueError: on an unknown state format or a different pool size.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not a VAS state (format {state.get('format')!r}, expected {STATE_FORMAT!r}): "
                "pass the 'vas' entry of the checkpoint"
            )
        self.sampler.load_state_dict(state["sampler"])
        self.table.load_state_dict(state["table"])
        self.step = int(state["step"])
        last = state["last_refresh_step"]
        self.last_refresh_step = None if last is None else int(last)
        self.refreshes = int(state["refreshes"])
        self.sampler.set_weights(self.table.vps if self.last_refresh_step is not None else None)
