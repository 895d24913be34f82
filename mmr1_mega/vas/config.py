"""Configuration of Variance-Aware Sampling (MMR1, arXiv 2509.21268, Section 3 and Algorithm 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

TDS_METRICS = ("self_bleu", "distinct_n", "edit_distance")
NAN_POLICIES = ("failure", "exclude")


@dataclass
class VASConfig:
    """Knobs of Variance-Aware Sampling; defaults follow the paper.

    Fields:
        enabled: draw prompts with VAS; False means plain shuffling (the trainer skips refreshes).
        mixture_ratio: lambda in [0, 1], the share floor(lambda * B) of each batch drawn in proportion to VPS;
            the rest comes from a uniform shuffled pass over the pool.
        alpha: weight of the outcome variance score OVS = P(1 - P) in VPS (paper: 0.8).
        beta: weight of the trajectory diversity score TDS in VPS (paper: 0.2).
        tds_metric: the diversity measure: "self_bleu" (1 - mean self-BLEU-123, NLTK method1 smoothing),
            "distinct_n" (distinct n-grams / all n-grams, order `distinct_order`), "edit_distance" (mean
            pairwise normalised Levenshtein distance, slow: O(L^2) per pair) - or a mapping name -> weight
            to blend several (weights are normalised to sum 1).
        distinct_order: n of distinct-n.
        n_rollouts: N, rollouts per prompt at a refresh.
        update_every_steps: T_update, training steps between two refreshes (paper: 56); a refresh also runs
            before the first step.
        refresh_share: share of the pool re-scored at a refresh, stalest prompts first (1.0 = all, the paper).
        momentum: m, new VPS = m * old + (1 - m) * fresh after min-max normalisation (0 = the paper).
        online_update: also fold the training batch's own rollouts into the estimate (beyond the paper).
        refresh: re-score the pool with N fresh rollouts per prompt before the first step and every
            update_every_steps steps (the paper). False: never; VPS comes only from the training rollouts
            (online_update must be on), which costs no rollouts beyond training's own - prompts not yet
            trained on take the mean VPS of those that were.
        eps: epsilon of the min-max normalisation (v - min) / (max - min + eps).
        nan_accuracy: an accuracy outcome that is NaN counts as "failure" (0) or is "exclude"d from P.
        seed: seed of the sampler's generator (shuffles and weighted draws).
        chunk_prompts: prompts per call of the scoring callable at a refresh (and per vectorised TDS chunk).
        history_max_refreshes: VPS snapshots kept in the state for the Figure-3 plot (0 keeps none).
        progress: show a progress bar during refreshes.
    """

    enabled: bool = True
    mixture_ratio: float = 0.5
    alpha: float = 0.8
    beta: float = 0.2
    tds_metric: Union[str, dict[str, float]] = "self_bleu"
    distinct_order: int = 2
    n_rollouts: int = 16
    update_every_steps: int = 56
    refresh_share: float = 1.0
    momentum: float = 0.0
    online_update: bool = False
    refresh: bool = True
    eps: float = 1e-8
    nan_accuracy: str = "failure"
    seed: int = 1234
    chunk_prompts: int = 64
    history_max_refreshes: int = 64
    progress: bool = True

    def tds_weights(self) -> dict[str, float]:
        """Return the TDS metrics and their weights (summing to 1).

        Returns:
            mapping metric name -> weight.
        Raises:
            ValueError: on an unknown metric name or non-positive weights (see `validate`).
        """
        self.validate()
        if isinstance(self.tds_metric, str):
            return {self.tds_metric: 1.0}
        total = sum(float(w) for w in self.tds_metric.values())
        return {k: float(w) / total for k, w in self.tds_metric.items()}

    def validate(self) -> None:
        """Check every field before any work starts.

        Raises:
            ValueError: naming the field, the bad value and what to set instead.
        """

        def bad(field: str, value: object, want: str) -> ValueError:
            return ValueError(f"vas.{field}={value!r} is invalid: set it to {want}")

        if not 0.0 <= self.mixture_ratio <= 1.0:
            raise bad("mixture_ratio", self.mixture_ratio, "a value in [0, 1] (paper: 0.5)")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise bad(name, v, "a finite number >= 0 (paper: alpha 0.8, beta 0.2)")
        if self.alpha + self.beta <= 0:
            raise bad("alpha", self.alpha, "a value > 0 or vas.beta > 0 (VPS would be identically 0)")
        metrics = {self.tds_metric: 1.0} if isinstance(self.tds_metric, str) else self.tds_metric
        if not isinstance(metrics, dict) or not metrics:
            raise bad("tds_metric", self.tds_metric, f"one of {TDS_METRICS} or a mapping of them to weights")
        for k, w in metrics.items():
            if k not in TDS_METRICS:
                raise bad("tds_metric", k, f"one of {TDS_METRICS}")
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                raise bad("tds_metric", f"{k}: {w}", "weights > 0")
        if self.distinct_order < 1:
            raise bad("distinct_order", self.distinct_order, "an integer >= 1")
        if self.n_rollouts < 1:
            raise bad(
                "n_rollouts", self.n_rollouts, "an integer >= 1 (paper: 16; >= 2 for a diversity score)"
            )
        if self.update_every_steps < 1:
            raise bad("update_every_steps", self.update_every_steps, "an integer >= 1 (paper: 56)")
        if not 0.0 < self.refresh_share <= 1.0:
            raise bad("refresh_share", self.refresh_share, "a value in (0, 1] (1.0 re-scores the whole pool)")
        if not 0.0 <= self.momentum < 1.0:
            raise bad("momentum", self.momentum, "a value in [0, 1) (0 = the paper)")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise bad("eps", self.eps, "a small positive number such as 1e-8")
        if self.nan_accuracy not in NAN_POLICIES:
            raise bad("nan_accuracy", self.nan_accuracy, f"one of {NAN_POLICIES}")
        if self.chunk_prompts < 1:
            raise bad("chunk_prompts", self.chunk_prompts, "an integer >= 1")
        if self.history_max_refreshes < 0:
            raise bad("history_max_refreshes", self.history_max_refreshes, "an integer >= 0")
        if self.enabled and not self.refresh and not self.online_update:
            raise bad(
                "refresh",
                self.refresh,
                "true, or vas.online_update=true (without refreshes VPS can only come from the training rollouts)",
            )
