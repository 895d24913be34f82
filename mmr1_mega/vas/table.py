"""Per-prompt VPS state of the pool: the statistics behind each score, the normalised VPS, and its history."""

from __future__ import annotations

import numpy as np
import torch

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.scores import PromptScores, blend, minmax_normalise, pass_rate, raw_vps


class VPSTable:
    """VPS of every prompt of the pool (MMR1 Algorithm 1, "compute VPS for all prompts").

    Prompts never scored (possible only with refresh_share < 1) take the mean VPS of the scored ones, a
    neutral prior, until a refresh reaches them (they are the stalest, so the next refreshes pick them first).
    """

    def __init__(self, pool_size: int, cfg: VASConfig) -> None:
        self.cfg = cfg
        self.successes = np.zeros(pool_size)
        self.trials = np.zeros(pool_size)
        self.tds = np.zeros(pool_size)
        self.tds_weight = np.zeros(pool_size)
        self.vps = np.zeros(pool_size)
        self.scored = np.zeros(pool_size, dtype=bool)
        self.last_scored_step = np.full(pool_size, -1, dtype=np.int64)
        self.norm_lo = 0.0
        self.norm_hi = 0.0
        self.history: list[dict] = []

    @property
    def pool_size(self) -> int:
        return self.vps.size

    def pass_rate(self) -> np.ndarray:
        """P of every prompt (0 where unscored)."""
        return pass_rate(self.successes, self.trials)

    def raw(self) -> np.ndarray:
        """alpha * OVS + beta * TDS of every prompt, before normalisation."""
        return raw_vps(self.pass_rate(), self.tds, self.cfg.alpha, self.cfg.beta)

    def apply_refresh(self, indices: np.ndarray, scores: PromptScores, step: int) -> None:
        """Replace the statistics of re-scored prompts, then renormalise the pool and blend by momentum.

        Takes:
            indices: int64 [K] re-scored prompts (unique).
            scores: their fresh PromptScores.
            step: training step of the refresh (staleness bookkeeping and history).
        """
        self.successes[indices] = scores.successes
        self.trials[indices] = scores.trials
        self.tds[indices] = scores.tds
        self.tds_weight[indices] = scores.n_responses
        was_scored = self.scored.copy()
        self.scored[indices] = True
        self.last_scored_step[indices] = step
        fresh, self.norm_lo, self.norm_hi = minmax_normalise(self.raw()[self.scored], self.cfg.eps)
        new = np.zeros(self.pool_size)
        new[self.scored] = fresh
        new = np.where(was_scored, blend(self.vps, new, self.cfg.momentum), new)
        if self.scored.any():
            new[~self.scored] = new[self.scored].mean()
        self.vps = new
        self._record(step)

    def fold_online(self, indices: np.ndarray, scores: PromptScores, renormalise: bool = False) -> None:
        """Pool a training batch's rollouts into the estimate of the prompts just trained (beyond the paper).

        P uses all outcomes since the last refresh; TDS is the response-weighted mean of the estimates. The new
        raw value is normalised with the min / max of the last refresh and clipped to [0, 1], so prompts not in
        the batch keep their VPS. Repeated indices are folded one after the other.
        renormalise (no refreshes at all): instead, the whole pool is min-max normalised over every prompt
        observed so far, and prompts never observed take the mean VPS of the observed ones (as never-scored
        prompts do after a partial refresh).

        Takes:
            indices: int64 [K] prompts of the batch (repeats allowed).
            scores: PromptScores of the batch, one per index.
        """
        for k, i in enumerate(indices.tolist()):
            w_old, w_new = self.tds_weight[i], scores.n_responses[k]
            if w_old + w_new > 0:
                self.tds[i] = (self.tds[i] * w_old + scores.tds[k] * w_new) / (w_old + w_new)
            self.tds_weight[i] = w_old + w_new
            self.successes[i] += scores.successes[k]
            self.trials[i] += scores.trials[k]
        uniq = np.unique(indices)
        if renormalise:
            self.scored[uniq] = True
            fresh, self.norm_lo, self.norm_hi = minmax_normalise(self.raw()[self.scored], self.cfg.eps)
            self.vps = np.full(self.pool_size, fresh.mean())
            self.vps[self.scored] = fresh
            return
        raw = raw_vps(
            pass_rate(self.successes[uniq], self.trials[uniq]), self.tds[uniq], self.cfg.alpha, self.cfg.beta
        )
        self.vps[uniq] = np.clip(
            (raw - self.norm_lo) / (self.norm_hi - self.norm_lo + self.cfg.eps), 0.0, 1.0
        )
        self.scored[uniq] = True

    def _record(self, step: int) -> None:
        if self.cfg.history_max_refreshes == 0:
            return
        self.history.append({"step": int(step), "vps": torch.from_numpy(self.vps.astype(np.float32))})
        del self.history[: -self.cfg.history_max_refreshes]

    def state_dict(self) -> dict:
        """Plain tensors and Python values (torch.save / torch.load(weights_only=True) safe)."""
        return {
            "successes": torch.from_numpy(self.successes.copy()),
            "trials": torch.from_numpy(self.trials.copy()),
            "tds": torch.from_numpy(self.tds.copy()),
            "tds_weight": torch.from_numpy(self.tds_weight.copy()),
            "vps": torch.from_numpy(self.vps.copy()),
            "scored": torch.from_numpy(self.scored.copy()),
            "last_scored_step": torch.from_numpy(self.last_scored_step.copy()),
            "norm_lo": self.norm_lo,
            "norm_hi": self.norm_hi,
            "history": [{"step": h["step"], "vps": h["vps"].clone()} for h in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict of a table over a pool of the same size.

        Raises:
            ValueError: if the saved pool size differs from this pool's.
        """
        saved = int(state["vps"].numel())
        if saved != self.pool_size:
            raise ValueError(
                f"VAS state covers {saved} prompts but the pool has {self.pool_size}: resume with the same "
                "dataset (and filters) as the run that saved it"
            )
        for name in ("successes", "trials", "tds", "tds_weight", "vps", "scored", "last_scored_step"):
            setattr(self, name, state[name].numpy().copy())
        self.norm_lo, self.norm_hi = float(state["norm_lo"]), float(state["norm_hi"])
        self.history = [{"step": int(h["step"]), "vps": h["vps"].clone()} for h in state["history"]]
