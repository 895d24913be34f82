"""Per-prompt scores of Variance-Aware Sampling (MMR1 Section 3): OVS, TDS and the pooled VPS.

Definitions (documented choices for edge cases marked *):
* P(x) = mean accuracy outcome of the prompt's rollouts; OVS(x) = P(1 - P) (Section 3, outcome variance).
  * A NaN outcome counts as a failure (nan_accuracy="failure") or is left out of P ("exclude"); a prompt
    with no countable outcome gets P = 0, hence OVS = 0.
* TDS(x) = diversity of the responses, in [0, 1], higher = more diverse:
  "self_bleu" = 1 - mean over responses of self-BLEU-123 (self_bleu.py), "distinct_n", "edit_distance"
  (diversity.py); a blend by weights when several are configured.
  * With fewer than two responses, or only empty responses, there is nothing to compare: TDS = 0.
* VPS(x) = alpha * OVS + beta * TDS, min-max normalised over the scored pool:
  (v - min) / (max - min + eps), then blended with the previous value: m * old + (1 - m) * fresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.diversity import distinct_n_packed, edit_distance_packed
from mmr1_mega.vas.ngrams import PackedResponses, pack_responses
from mmr1_mega.vas.outcomes import RolloutOutcomes
from mmr1_mega.vas.self_bleu import self_bleu_packed


@dataclass
class PromptScores:
    """Scores of a list of prompts, each field float64 [K].

    Fields:
        successes: sum of countable accuracy outcomes; trials: number of countable outcomes.
        tds: trajectory diversity; n_responses: responses behind tds.
    """

    successes: np.ndarray
    trials: np.ndarray
    tds: np.ndarray
    n_responses: np.ndarray

    @property
    def pass_rate(self) -> np.ndarray:
        return pass_rate(self.successes, self.trials)

    @staticmethod
    def concat(parts: Sequence[PromptScores]) -> PromptScores:
        """Concatenate the scores of consecutive chunks."""
        if not parts:
            z = np.zeros(0)
            return PromptScores(z, z, z, z)
        return PromptScores(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in PromptScores.__dataclass_fields__)
        )


def pass_rate(successes: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """P = successes / trials, 0 where there is no countable outcome."""
    return np.divide(successes, trials, out=np.zeros_like(successes, dtype=np.float64), where=trials > 0)


def outcome_variance(p: np.ndarray) -> np.ndarray:
    """OVS = P (1 - P) (MMR1 Section 3): largest (0.25) at P = 0.5, zero when all rollouts agree."""
    return p * (1.0 - p)


def count_outcomes(accuracies: Sequence[float], nan_accuracy: str) -> tuple[float, float]:
    """Return (successes, trials) of one prompt's accuracy outcomes under the NaN policy ("failure"/"exclude")."""
    acc = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    nan = np.isnan(acc)
    if nan_accuracy == "failure":
        return float(np.where(nan, 0.0, acc).sum()), float(acc.size)
    return float(acc[~nan].sum()), float((~nan).sum())


def trajectory_diversity(
    packed: PackedResponses, weights: dict[str, float], distinct_order: int = 2
) -> np.ndarray:
    """TDS of each prompt of a packed chunk (see module docstring).

    Takes:
        packed: responses of the chunk (ngrams.pack_responses).
        weights: metric name -> weight, summing to 1 (VASConfig.tds_weights()).
        distinct_order: n of distinct-n.
    Returns:
        float64 [P] in [0, 1].
    Raises:
        ValueError: on an unknown metric name.
    """
    P = packed.n_prompts
    tds = np.zeros(P)
    for metric, w in weights.items():
        if metric == "self_bleu":
            bleu = self_bleu_packed(packed, max_order=3)
            has_ref = ~np.isnan(bleu)
            sums = np.bincount(packed.prompt_of, weights=np.where(has_ref, bleu, 0.0), minlength=P)
            counts = np.bincount(packed.prompt_of, weights=has_ref.astype(np.float64), minlength=P)
            value = 1.0 - np.divide(sums, counts, out=np.ones(P), where=counts > 0)
        elif metric == "distinct_n":
            value = distinct_n_packed(packed, distinct_order)
        elif metric == "edit_distance":
            value = edit_distance_packed(packed)
        else:
            raise ValueError(f"unknown TDS metric {metric!r}: use self_bleu, distinct_n or edit_distance")
        tds += w * value
    n_resp = np.diff(packed.group_start)
    any_tokens = np.bincount(packed.prompt_of, weights=packed.lengths, minlength=P) > 0
    return np.where((n_resp >= 2) & any_tokens, tds, 0.0)


def score_prompts(outcomes: Sequence[RolloutOutcomes], cfg: VASConfig) -> PromptScores:
    """Turn the rollouts of a list of prompts into their scores (vectorised over the list).

    Takes:
        outcomes: one RolloutOutcomes per prompt.
        cfg: VASConfig (nan_accuracy, tds_metric, distinct_order).
    Returns:
        PromptScores with one entry per prompt.
    """
    succ_trials = [count_outcomes(o.accuracies, cfg.nan_accuracy) for o in outcomes]
    successes = np.array([s for s, _ in succ_trials], dtype=np.float64)
    trials = np.array([t for _, t in succ_trials], dtype=np.float64)
    packed = pack_responses([o.response_ids for o in outcomes])
    tds = trajectory_diversity(packed, cfg.tds_weights(), cfg.distinct_order)
    return PromptScores(successes, trials, tds, np.diff(packed.group_start).astype(np.float64))


def raw_vps(scores_pass_rate: np.ndarray, tds: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """alpha * OVS + beta * TDS before normalisation (MMR1 Section 3, VPS)."""
    return alpha * outcome_variance(scores_pass_rate) + beta * tds


def minmax_normalise(values: np.ndarray, eps: float) -> tuple[np.ndarray, float, float]:
    """(v - min) / (max - min + eps) in [0, 1); returns (normalised, min, max); an empty input gives zeros."""
    if values.size == 0:
        return values.astype(np.float64), 0.0, 0.0
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo + eps), lo, hi


def blend(old: np.ndarray, fresh: np.ndarray, momentum: float) -> np.ndarray:
    """m * old + (1 - m) * fresh; m = 0 (the paper) keeps only the fresh value."""
    return momentum * old + (1.0 - momentum) * fresh
