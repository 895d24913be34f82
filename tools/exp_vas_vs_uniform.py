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


def _mean_curve(results, setting, key):
    import numpy as np

    runs = [v[key] for k, v in results.items() if k.startswith(setting + "/") and v[key]]
    if not runs:
        return [], [], []
    steps = sorted(set.intersection(*[{s for s, _ in r} for r in runs]))
    vals = np.array([[dict(r)[s] for s in steps] for r in runs])
    return steps, vals.mean(0), vals.std(0)


def plot(results, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("actor/grad_norm", "grad norm"),
        ("actor/pg_clipfrac_high", "clip fraction (high)"),
        ("reward/zero_std_group_frac", "groups with zero reward variance"),
        ("val/accuracy", "validation accuracy"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for ax, (key, title) in zip(axes, panels):
        for setting in SETTINGS:
            steps, mean, std = _mean_curve(results, setting, key)
            if steps:
                ax.plot(steps, mean, label=setting)
                ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Uniform sampling vs VAS on the demo task (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def summary(results) -> str:
    import numpy as np

    lines = [f"{'setting':<10} {'grad_norm':>10} {'clipfrac':>10} {'zero_std':>10} {'val_acc_end':>12}"]
    for setting in SETTINGS:
        row = []
        for key in ("actor/grad_norm", "actor/pg_clipfrac_high", "reward/zero_std_group_frac"):
            steps, mean, _ = _mean_curve(results, setting, key)
            row.append(float(np.mean(mean)) if steps else float("nan"))
        steps, mean, _ = _mean_curve(results, setting, "val/accuracy")
        row.append(float(mean[-1]) if steps else float("nan"))
        lines.append(f"{setting:<10} " + " ".join(f"{v:>10.4f}" for v in row[:3]) + f" {row[3]:>12.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
