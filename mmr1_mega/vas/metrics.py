"""Logging metrics of VAS: VPS statistics, weighted share, pass-rate and VPS histograms (MMR1 Figure 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmr1_mega.vas.controller import VarianceAwareSampler
    from mmr1_mega.vas.table import VPSTable


def vas_metrics(vas: VarianceAwareSampler) -> dict[str, float]:
    """Scalar metrics of the current VPS and the last batch.

    Takes:
        vas: the sampler (rank 0).
    Returns:
        {"vas/vps_mean", "vas/vps_std", "vas/vps_min", "vas/vps_max", "vas/weighted_share",
         "vas/uniform_share", "vas/batch_vps_mean", "vas/pass_rate_mean", "vas/scored_share",
         "vas/refreshes", "vas/last_refresh_s"}.
    """
    t = vas.table
    vps = t.vps
    return {
        "vas/vps_mean": float(vps.mean()),
        "vas/vps_std": float(vps.std()),
        "vas/vps_min": float(vps.min()),
        "vas/vps_max": float(vps.max()),
        "vas/weighted_share": vas.last_weighted_share,
        "vas/uniform_share": 1.0 - vas.last_weighted_share,
        "vas/batch_vps_mean": vas.last_batch_vps_mean,
        "vas/pass_rate_mean": float(t.pass_rate()[t.scored].mean()) if t.scored.any() else 0.0,
        "vas/scored_share": float(t.scored.mean()),
        "vas/refreshes": float(vas.refreshes),
        "vas/last_refresh_s": vas.last_refresh_s,
    }


def vas_histograms(table: VPSTable, bins: int = 10) -> dict[str, np.ndarray]:
    """Counts over `bins` equal bins of [0, 1] of the scored prompts' VPS and pass rate.

    Returns:
        {"vps": int64 [bins], "pass_rate": int64 [bins], "edges": float64 [bins + 1]}.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "vps": vps_bin_counts(table.vps[table.scored], bins),
        "pass_rate": vps_bin_counts(table.pass_rate()[table.scored], bins),
        "edges": edges,
    }


def vps_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin index in 0..bins-1 of values in [0, 1] (1.0 falls in the last bin)."""
    return np.clip((np.asarray(values, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


def vps_bin_counts(values: np.ndarray, bins: int) -> np.ndarray:
    """Counts per bin of vps_bins."""
    return np.bincount(vps_bins(values, bins), minlength=bins)


def bin_transitions(before: np.ndarray, after: np.ndarray, bins: int) -> np.ndarray:
    """Transition matrix between two VPS snapshots of the same pool: M[i, j] = prompts moving from bin i to j.

    Returns:
        int64 [bins, bins].
    """
    a, b = vps_bins(before, bins), vps_bins(after, bins)
    return np.bincount(a * bins + b, minlength=bins * bins).reshape(bins, bins)
