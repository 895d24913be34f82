"""Train-inference mismatch: how far the rollout engine's log-probabilities of the tokens it sampled are from
the actor's on the same weights (different kernels, batching, precision, or a weight sync gone wrong).

On the response tokens, with d = actor_logp - engine_logp (both raw: temperature 1):
- abs_mean / abs_max: mean and largest |d|;
- k3: mean of exp(d) - d - 1, Schulman's low-variance estimator of KL(engine || actor) from the engine's
  samples (the ratio actor/engine is what an importance-sampling correction would weigh tokens by).
Per rank: sums (mismatch_stats); across ranks: combine_mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def mismatch_stats(engine_logp: torch.Tensor, actor_logp: torch.Tensor, mask: torch.Tensor) -> dict:
    """Sums over the masked (response) tokens of |d| and k3, their count and max |d| (fp64)."""
    m = mask.bool()
    d = actor_logp.double()[m] - engine_logp.double()[m]
    if d.numel() == 0:
        return {"n": 0, "abs_sum": 0.0, "abs_max": 0.0, "k3_sum": 0.0}
    return {
        "n": int(d.numel()),
        "abs_sum": float(d.abs().sum()),
        "abs_max": float(d.abs().max()),
        "k3_sum": float((torch.exp(d) - d - 1).sum()),
    }


def combine_mismatch(parts: Iterable[dict | None]) -> dict[str, float]:
    """The step's metrics from every rank's mismatch_stats (None where a rank computed none)."""
    parts = [p for p in parts if p]
    n = sum(p["n"] for p in parts)
    if n == 0:
        return {}
    return {
        "rollout/logp_mismatch_abs_mean": sum(p["abs_sum"] for p in parts) / n,
        "rollout/logp_mismatch_abs_max": max(p["abs_max"] for p in parts),
        "rollout/logp_mismatch_k3": sum(p["k3_sum"] for p in parts) / n,
    }
