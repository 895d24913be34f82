"""Figure-3-style plot of VPS dynamics (MMR1 Figure 3) from saved VAS states: VPS histograms per refresh and
bin-transition matrices between consecutive refreshes, written as a PNG.

The VPS snapshots come from state["table"]["history"] (one per refresh, kept by VPSTable, at most
VASConfig.history_max_refreshes); a state without history contributes its current VPS. Several files may be
given (e.g. successive checkpoints); snapshots are merged by step.

Usage: python tools/plot_vas.py STATE.pt [STATE2.pt ...] --out vas.png [--bins 10] [--panels 6]
(also `mmr1-mega plot vas ...`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmr1_mega.vas.controller import STATE_FORMAT
from mmr1_mega.vas.metrics import bin_transitions, vps_bin_counts


def find_vas_state(obj: object) -> dict | None:
    """The VAS state inside a loaded object: the object itself or a nested dict with its format tag."""
    if isinstance(obj, dict):
        if obj.get("format") == STATE_FORMAT:
            return obj
        for value in obj.values():
            found = find_vas_state(value)
            if found is not None:
                return found
    return None


def load_snapshots(paths: Sequence[str | Path]) -> list[tuple[int, np.ndarray]]:
    """(step, VPS array) of every refresh found in the files, sorted by step, one per step.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file holds no VAS state, or the snapshots cover pools of different sizes.
    """
    by_step: dict[int, np.ndarray] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: pass a file saved from VarianceAwareSampler.state_dict()"
            )
        state = find_vas_state(torch.load(path, map_location="cpu", weights_only=True))
        if state is None:
            raise ValueError(
                f"{path} holds no VAS state (no dict with format {STATE_FORMAT!r}): pass a VAS state or a checkpoint holding one"
            )
        table = state["table"]
        if table["history"]:
            for h in table["history"]:
                by_step[int(h["step"])] = h["vps"].numpy().astype(np.float64)
        elif state["last_refresh_step"] is not None:
            by_step[int(state["last_refresh_step"])] = table["vps"].numpy().astype(np.float64)
    sizes = {v.size for v in by_step.values()}
    if len(sizes) > 1:
        raise ValueError(
            f"the VAS states cover pools of different sizes {sorted(sizes)}: plot states of one run"
        )
    return sorted(by_step.items())


def plot_vps_dynamics(
    snapshots: Sequence[tuple[int, np.ndarray]], out: str | Path, bins: int = 10, panels: int = 6
) -> Path:
    """Draw histograms (top row) and transition matrices (bottom row) for up to `panels` snapshots.

    Takes:
        snapshots: (step, VPS) sorted by step.
        out: PNG path.
        bins: equal bins over [0, 1].
        panels: at most this many snapshots, evenly spaced, first and last included.
    Returns:
        the written path.
    Raises:
        ValueError: if there is no snapshot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not snapshots:
        raise ValueError("no VPS snapshot to plot: the state has no refresh yet (run at least one step)")
    pick = np.unique(np.linspace(0, len(snapshots) - 1, min(panels, len(snapshots))).round().astype(int))
    chosen = [snapshots[i] for i in pick]
    k = len(chosen)
    fig, axes = plt.subplots(2, k, figsize=(3.2 * k, 6.4), squeeze=False)
    centers = (np.arange(bins) + 0.5) / bins
    for c, (step, vps) in enumerate(chosen):
        ax = axes[0, c]
        share = vps_bin_counts(vps, bins) / max(1, vps.size)
        ax.bar(centers, share, width=1.0 / bins, edgecolor="black", linewidth=0.5)
        ax.set_title(f"VPS at step {step}")
        ax.set_xlim(0, 1)
        ax.set_xlabel("VPS")
        if c == 0:
            ax.set_ylabel("share of prompts")
    for c in range(k):
        ax = axes[1, c]
        if c == 0:
            ax.axis("off")
            ax.text(
                0.5,
                0.5,
                "bin transitions\nrow: earlier bin\ncolumn: later bin\n(row-normalised)",
                ha="center",
                va="center",
            )
            continue
        (s0, v0), (s1, v1) = chosen[c - 1], chosen[c]
        m = bin_transitions(v0, v1, bins).astype(np.float64)
        m = np.divide(
            m, m.sum(axis=1, keepdims=True), out=np.zeros_like(m), where=m.sum(axis=1, keepdims=True) > 0
        )
        im = ax.imshow(m, origin="lower", vmin=0, vmax=1, cmap="viridis", extent=(0, 1, 0, 1))
        ax.set_title(f"step {s0} -> {s1}")
        ax.set_xlabel(f"VPS bin at {s1}")
        ax.set_ylabel(f"VPS bin at {s0}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("VPS dynamics (MMR1 Figure 3 style)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: plot VPS dynamics from saved VAS states.

    Takes:
        argv: arguments (None: sys.argv).
    Returns:
        0 on success.
    """
    ap = argparse.ArgumentParser(
        prog="plot_vas", description="Plot VPS histograms and bin transitions (MMR1 Fig. 3)"
    )
    ap.add_argument(
        "states",
        nargs="+",
        help="files saved from VarianceAwareSampler.state_dict() or checkpoints holding one",
    )
    ap.add_argument("--out", default="vas_dynamics.png", help="PNG to write")
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--panels", type=int, default=6, help="most refreshes shown")
    args = ap.parse_args(argv)
    out = plot_vps_dynamics(load_snapshots(args.states), args.out, args.bins, args.panels)
    print(f"wrote {out}")
    return 0
