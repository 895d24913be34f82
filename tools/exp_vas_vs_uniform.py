"""Uniform sampling vs VAS (lambda 0.5 and 1.0) on the demo task over several seeds: the paper's Figure 2
on our task. One SFT policy is trained (or reused), then a GRPO run per (setting, seed) from it.

    python tools/exp_vas_vs_uniform.py --out outputs/vas_exp --seeds 0 1 2 [--steps 40] [--jobs 2] [overrides]

Writes <out>/results.json (per run: step -> grad norm, clip fraction, train / validation accuracy) and
<out>/vas_vs_uniform.png; prints a summary table. Finished runs (a metrics file that reached the last step)
are reused, so an interrupted experiment continues where it stopped. --jobs N runs N GRPO runs at once, each
as its own process with cores / N threads (each run's log: <out>/<setting>-seed<k>.log).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SETTINGS = {"uniform": 0.0, "vas-0.5": 0.5, "vas-1.0": 1.0}
KEYS = (
    "actor/grad_norm",
    "actor/pg_clipfrac_high",
    "actor/pg_clipfrac_low",
    "reward/accuracy",
    "val/accuracy",
    "reward/zero_std_group_frac",
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/vas_exp")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="GRPO runs at once (separate processes)")
    ap.add_argument("--config", default=None, help="demo YAML (default: examples/demo_cpu.yaml)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")

    import yaml

    from mmr1_mega.trainer.demo import DEMO_CONFIG, build_assets
    from mmr1_mega.trainer.logger import read_metrics
    from mmr1_mega.trainer.main import sft_main, train_main

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    demo = yaml.safe_load(Path(args.config or DEMO_CONFIG).read_text())
    model_dir, paths = build_assets(out, demo, seed=0)
    cfg_file = out / "grpo.yaml"
    cfg_file.write_text(yaml.safe_dump(demo["grpo"]))
    data = [
        f"data.train_files=[{paths['train']}]",
        f"data.val_files=[{paths['val']}]",
        f"data.sft_files=[{paths['sft_train']}]",
    ]
    sft_dir = out / "sft_hf"
    if not (sft_dir / "config.json").is_file():
        assert (
            sft_main(
                [
                    str(cfg_file),
                    f"model.hf_path={model_dir}",
                    f"train.output_dir={out}",
                    f"sft.export_dir={sft_dir}",
                    *data,
                ]
            )
            == 0
        )
    steps = args.steps or demo["grpo"]["train"]["steps"]
    runs = []
    for name in args.settings:
        for seed in args.seeds:
            run_dir = out / f"{name}-seed{seed}"
            argv_run = [
                str(cfg_file),
                f"model.hf_path={sft_dir}",
                f"train.output_dir={run_dir}",
                f"vas.mixture_ratio={SETTINGS[name]}",
                f"vas.enabled={SETTINGS[name] > 0}",
                f"train.seed={seed}",
                f"train.steps={steps}",
                *data,
                *args.overrides,
            ]
            runs.append((name, seed, run_dir, argv_run))
    todo = [r for r in runs if not _finished(r[2] / "metrics.jsonl", steps, read_metrics)]
    print(
        f"[exp] {len(runs) - len(todo)} of {len(runs)} runs already finished; running {len(todo)}", flush=True
    )
    rc = _run_all(todo, args.jobs, out, train_main)
    if rc:
        return rc
    results = {}
    for name, seed, run_dir, _ in runs:
        recs = read_metrics(run_dir / "metrics.jsonl")
        results[f"{name}/seed{seed}"] = {k: [(r["step"], r[k]) for r in recs if k in r] for k in KEYS}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.json").write_text(json.dumps(summary_rows(results), indent=1))
    png = plot(results, out / "vas_vs_uniform.png")
    print(summary(results))
    print(f"wrote {out / 'results.json'} and {png}")
    return 0


def _finished(metrics: Path, steps: int, read_metrics) -> bool:
    if not metrics.is_file():
        return False
    return any(r.get("step") == steps and "val/accuracy" in r for r in read_metrics(metrics))


def _run_all(todo, jobs: int, out: Path, train_main) -> int:
    """Run the GRPO runs in-process (jobs=1) or as `jobs` concurrent processes; returns the first failure code."""
    import os
    import subprocess
    import time

    if jobs == 1:
        for name, seed, _, argv_run in todo:
            print(f"[exp] {name} seed {seed}", flush=True)
            rc = train_main(argv_run)
            if rc:
                return rc
        return 0
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending, running, failed = list(todo), [], 0
    while pending or running:
        while pending and len(running) < jobs:
            name, seed, run_dir, argv_run = pending.pop(0)
            log = open(out / f"{name}-seed{seed}.log", "w")
            cmd = [sys.executable, "-m", "mmr1_mega.cli", "train", *argv_run]
            running.append(
                (name, seed, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
            )
            print(f"[exp] started {name} seed {seed} (log {log.name})", flush=True)
        time.sleep(2)
        for item in list(running):
            name, seed, proc, log = item
            if proc.poll() is not None:
                running.remove(item)
                log.close()
                print(f"[exp] {name} seed {seed} finished with exit code {proc.returncode}", flush=True)
                failed = failed or proc.returncode
    return failed


def _curves(results, setting, key):
    """(steps, [runs x steps] values) of one setting over the steps every run of it logged."""
    import numpy as np

    runs = [v[key] for k, v in results.items() if k.startswith(setting + "/") and v.get(key)]
    if not runs:
        return [], np.zeros((0, 0))
    steps = sorted(set.intersection(*[{s for s, _ in r} for r in runs]))
    return steps, np.array([[dict(r)[s] for s in steps] for r in runs], dtype=float)


def _smooth(y, window: int):
    import numpy as np

    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window // 2, y[0]), y, np.full(window - 1 - window // 2, y[-1])])
    return np.convolve(padded, kernel, mode="valid")


def plot(results, png: Path) -> Path:
    """Per setting: the mean over seeds (line, per-step curves smoothed over 5 steps) and the range over seeds
    (band). Grad norm on a log scale, where single-step spikes do not hide the typical level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [
        ("actor/grad_norm", "grad norm (log scale)", 5),
        ("actor/pg_clipfrac_high", "clip fraction (high)", 5),
        ("reward/zero_std_group_frac", "groups with zero reward variance", 5),
        ("reward/accuracy", "train accuracy (sampled prompts)", 5),
        ("val/accuracy", "validation accuracy (greedy)", 1),
    ]
    fig, grid = plt.subplots(2, 3, figsize=(16, 8.5))
    axes = grid.flat
    for ax, (key, title, window) in zip(axes, panels):
        for setting in SETTINGS:
            steps, vals = _curves(results, setting, key)
            if not steps:
                continue
            lo, hi = (_smooth(v, window) for v in (vals.min(0), vals.max(0)))
            # grad norm: the median over seeds, so one seed's single-step spike does not set the line
            centre = np.median(vals, 0) if key == "actor/grad_norm" else vals.mean(0)
            ax.plot(steps, _smooth(centre, window), label=f"{setting} ({len(vals)} seeds)")
            ax.fill_between(steps, lo, hi, alpha=0.15)
        if key == "actor/grad_norm":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    table = grid.flat[len(panels)]
    table.axis("off")
    table.text(0, 0.5, _table_text(results), family="monospace", fontsize=8.5, va="center")
    fig.suptitle(
        "Uniform sampling vs VAS on the demo task: mean over seeds (grad norm: median), band = range over seeds"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def summary_rows(results) -> dict[str, dict[str, float]]:
    """Per setting, averaged over seeds: mean and median grad norm over steps, clip fraction, zero-variance
    group fraction and train accuracy over steps; validation accuracy at the start and the last step."""
    import numpy as np

    rows = {}
    for setting in SETTINGS:
        row = {}
        steps, g = _curves(results, setting, "actor/grad_norm")
        if not steps:
            continue
        row["grad_norm_mean"] = float(g.mean())
        row["grad_norm_median"] = float(np.median(g, axis=1).mean())
        for key, name in (
            ("actor/pg_clipfrac_high", "clipfrac"),
            ("reward/zero_std_group_frac", "zero_std"),
            ("reward/accuracy", "train_acc"),
        ):
            _, v = _curves(results, setting, key)
            row[name] = float(v.mean()) if v.size else float("nan")
        _, v = _curves(results, setting, "val/accuracy")
        row["val_acc_start"] = float(v[:, 0].mean()) if v.size else float("nan")
        row["val_acc_end"] = float(v[:, -1].mean()) if v.size else float("nan")
        row["val_acc_end_min"] = float(v[:, -1].min()) if v.size else float("nan")
        row["val_acc_end_max"] = float(v[:, -1].max()) if v.size else float("nan")
        rows[setting] = row
    return rows


def _table_text(results) -> str:
    rows = summary_rows(results)
    lines = ["averages over seeds and steps", ""]
    lines.append(f"{'':<9}{'|g| med':>8}{'clip':>8}{'zero-var':>9}{'val end':>9}")
    for setting, r in rows.items():
        lines.append(
            f"{setting:<9}{r['grad_norm_median']:>8.3f}{r['clipfrac']:>8.4f}{r['zero_std']:>9.3f}{r['val_acc_end']:>9.3f}"
        )
    return "\n".join(lines)


def summary(results) -> str:
    rows = summary_rows(results)
    cols = [
        "grad_norm_mean",
        "grad_norm_median",
        "clipfrac",
        "zero_std",
        "train_acc",
        "val_acc_start",
        "val_acc_end",
    ]
    lines = [f"{'setting':<10} " + " ".join(f"{c:>16}" for c in cols)]
    for setting, row in rows.items():
        lines.append(f"{setting:<10} " + " ".join(f"{row[c]:>16.4f}" for c in cols))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
