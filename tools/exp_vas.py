"""Does Variance-Aware Sampling help, at equal rollout compute? Uniform sampling, VAS (lambda 0.5 / 1.0, with the
paper's refresh rollouts or with VPS from the training rollouts only), DAPO's dynamic sampling, and VAS + dynamic
sampling, on a visual counting task whose difficulty mix at the start of RL is controlled.

    python tools/exp_vas.py --out outputs/vas_evidence [--seeds 0 1 2 3 4] [--jobs 2] [--budget-steps 48]

Protocol (fixed before any run; docs/vas_experiment.md reports it):
1. Task and cold-start policy: the demo's tiny Qwen2.5-VL-architecture model, SFT on the demo's weak-teacher data
   (it copies the teacher's systematic miscount on images with distractors).
2. Difficulty filtering, as real RL pools are built: every candidate prompt (--candidates for training, as many
   again for validation) gets --difficulty-samples samples from the cold-start policy at temperature 1; its pass
   rate puts it in "solved" (all right), "unsolved" (all wrong) or "between". The training pool (--pool prompts)
   and the validation set (--val prompts, held-out images) are drawn with the shares --mix (solved, unsolved,
   between).
3. Equal compute: every run stops once it has generated --budget-steps x prompts_per_step x n_samples x L0
   response tokens, L0 = the cold-start policy's mean response length on the training pool. Every generated
   token counts: training rollouts of every dynamic-sampling round and VAS refresh rollouts
   (rollout/total_tokens). Validation (not counted) runs --evals times per run, evenly over the budget, and at
   the end.
4. Metrics: PRIMARY = validation pass@1 estimated from --val-samples samples per prompt at temperature 1, at the
   end of the budget; secondary: greedy validation accuracy at the end, and the area under the pass@1 curve
   over the budget (trapezoid over rollout tokens, divided by the budget). Per setting: mean over seeds and a
   95 % t-interval; per setting vs uniform: the mean paired difference (same seed = same validation samples'
   seed and training seed) and its 95 % t-interval. Wall time per run is reported too.

Writes <out>/results.json (per run: the curves and final numbers), <out>/summary.json and <out>/summary.md (the
table with intervals), <out>/vas_evidence.png (MMR1 Fig. 2 panels against rollout tokens). Finished runs are
reused; an interrupted run resumes from its last checkpoint (checkpoint.resume=auto). --jobs N runs N GRPO runs
at once, each a process with cores / N threads (logs: <out>/runs/<setting>-seed<k>.log).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

# name -> overrides of the GRPO config; every VAS setting uses the demo config's refresh schedule
SETTINGS = {
    "uniform": ["vas.enabled=false"],
    "vas-0.5": ["vas.mixture_ratio=0.5"],
    "vas-1.0": ["vas.mixture_ratio=1.0"],
    "vas-0.5-online": ["vas.mixture_ratio=0.5", "vas.refresh=false", "vas.online_update=true"],
    "dynamic": ["vas.enabled=false", "train.dynamic_sampling=true"],
    "vas-0.5+dynamic": ["vas.mixture_ratio=0.5", "train.dynamic_sampling=true"],
}
CLASSES = ("solved", "unsolved", "between")
CURVE_KEYS = (
    "rollout/total_tokens",
    "perf/step_seconds",
    "actor/grad_norm",
    "actor/pg_clipfrac_high",
    "actor/pg_clipfrac_low",
    "reward/accuracy",
    "reward/zero_std_group_frac",
    "val/pass1",
    "val/pass1_se",
    "val/accuracy",
    "val/accuracy_se",
)
# two-sided 95 % quantiles of Student's t by degrees of freedom (t_{0.975, df}); 1.96 beyond 30
T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
    20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
    29: 2.045, 30: 2.042,
}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/vas_evidence")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--jobs", type=int, default=2, help="GRPO runs at once (separate processes)")
    ap.add_argument("--config", default=None, help="demo YAML (default: examples/demo_cpu.yaml)")
    ap.add_argument(
        "--candidates", type=int, default=1536, help="candidate training prompts (as many for val)"
    )
    ap.add_argument("--pool", type=int, default=512, help="training prompts after difficulty filtering")
    ap.add_argument("--val", type=int, default=384, help="validation prompts after difficulty filtering")
    ap.add_argument("--mix", type=float, nargs=3, default=[0.3, 0.2, 0.5], metavar=CLASSES)
    ap.add_argument("--difficulty-samples", type=int, default=8)
    ap.add_argument(
        "--budget-steps", type=int, default=48, help="the budget in uniform steps' worth of tokens"
    )
    ap.add_argument("--evals", type=int, default=3, help="validations over the budget (plus the start)")
    ap.add_argument("--val-samples", type=int, default=4, help="samples per validation prompt for pass@1")
    ap.add_argument("--prepare-only", action="store_true", help="stop after the pools and the budget")
    ap.add_argument("overrides", nargs="*", help="more GRPO config overrides for every run")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.evals < 1 or args.budget_steps < 1:
        ap.error("--jobs, --evals and --budget-steps must be >= 1")
    if abs(sum(args.mix) - 1) > 1e-9 or min(args.mix) < 0:
        ap.error(f"--mix {args.mix}: three shares >= 0 that sum to 1 (solved, unsolved, between)")

    import yaml

    from mmr1_mega.trainer.demo import DEMO_CONFIG

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    demo = yaml.safe_load(Path(args.config or DEMO_CONFIG).read_text())
    started = time.perf_counter()
    sft_dir, data_dir, cfg_file = prepare_policy(out, demo, args.candidates)
    difficulty = measure_difficulty(out, sft_dir, cfg_file, data_dir, args.difficulty_samples)
    pools = compose_pools(out, data_dir, difficulty, args.pool, args.val, tuple(args.mix))
    grpo = demo["grpo"]
    per_step = grpo["train"]["prompts_per_step"] * grpo["rollout"]["n_samples"]
    budget = int(round(args.budget_steps * per_step * pools["mean_response_tokens"]))
    print(f"[exp] budget: {budget} rollout tokens ({args.budget_steps} uniform steps' worth)", flush=True)
    print(f"[exp] pools: {json.dumps(pools)}", flush=True)
    if args.prepare_only:
        return 0
    val_every = max(1, args.budget_steps // args.evals)
    runs = []
    for name in args.settings:
        for seed in args.seeds:
            run_dir = out / "runs" / f"{name}-seed{seed}"
            argv_run = [
                str(cfg_file),
                f"model.hf_path={sft_dir}",
                f"train.output_dir={run_dir}",
                f"data.train_files=[{pools['train']}]",
                f"data.val_files=[{pools['val']}]",
                f"train.seed={seed}",
                f"vas.seed={seed}",
                f"train.steps={4 * args.budget_steps}",  # a cap: the token budget ends every run first
                f"train.max_rollout_tokens={budget}",
                f"train.val_every_steps={val_every}",
                f"train.val_max_prompts={pools['val_prompts']}",
                f"train.val_samples={args.val_samples}",
                f"checkpoint.save_every_steps={val_every}",
                "checkpoint.resume=auto",
                "vas.progress=false",
                *SETTINGS[name],
                *args.overrides,
            ]
            runs.append((name, seed, run_dir, argv_run))
    todo = [r for r in runs if not finished(r[2])]
    print(
        f"[exp] {len(runs) - len(todo)} of {len(runs)} runs already finished; running {len(todo)}", flush=True
    )
    rc = run_all(todo, args.jobs, out)
    if rc:
        return rc
    results = {
        "protocol": {
            "budget_tokens": budget,
            "budget_steps": args.budget_steps,
            "val_every_steps": val_every,
            "val_samples": args.val_samples,
            "seeds": args.seeds,
            "settings": {k: SETTINGS[k] for k in args.settings},
            "pools": pools,
            "primary": "val/pass1 at the end of the budget",
        },
        "runs": {f"{name}/seed{seed}": collect(run_dir, budget) for name, seed, run_dir, _ in runs},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    rows = summarise(results)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    table = summary_markdown(rows, results["protocol"])
    (out / "summary.md").write_text(table + "\n")
    png = plot(results, out / "vas_evidence.png")
    print(table)
    print(
        f"[exp] wrote {out / 'results.json'}, {out / 'summary.md'}, {png} in {time.perf_counter() - started:.0f} s"
    )
    return 0


# ---- the task ------------------------------------------------------------------------------------------------


def prepare_policy(out: Path, demo: dict, candidates: int) -> tuple[Path, Path, Path]:
    """The demo's task data (candidates training prompts and as many validation prompts), processor, initial
    model and the SFT cold-start policy (reused when present). Returns (policy dir, data dir, GRPO config)."""
    import yaml

    from mmr1_mega.trainer.demo import build_assets
    from mmr1_mega.trainer.main import sft_main

    demo = {**demo, "synthetic": {**demo["synthetic"], "num_train": candidates, "num_val": candidates}}
    model_dir, paths = build_assets(out / "assets", demo, seed=0)
    cfg_file = out / "grpo.yaml"
    cfg_file.write_text(yaml.safe_dump(demo["grpo"]))
    sft_dir = out / "sft_hf"
    if not (sft_dir / "config.json").is_file():
        rc = sft_main(
            [
                str(cfg_file),
                f"model.hf_path={model_dir}",
                f"train.output_dir={out / 'sft'}",
                f"sft.export_dir={sft_dir}",
                f"data.train_files=[{paths['train']}]",
                f"data.val_files=[{paths['val']}]",
                f"data.sft_files=[{paths['sft_train']}]",
            ]
        )
        if rc:
            raise SystemExit(f"SFT of the cold-start policy failed with exit code {rc}")
    return sft_dir, Path(paths["train"]).parent, cfg_file


def measure_difficulty(out: Path, policy: Path, cfg_file: Path, data_dir: Path, samples: int) -> dict:
    """The cold-start policy's pass rate over `samples` samples (temperature 1) of every candidate, per split:
    {split: [{"row": row index in the split's file, "pass_rate", "mean_tokens"}]}. Cached in difficulty.json."""
    cache = out / "difficulty.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from mmr1_mega.config import load_config
    from mmr1_mega.data.rl_dataset import RLDataset
    from mmr1_mega.data.tokenizer import load_processor
    from mmr1_mega.rollout.local import LocalEngine
    from mmr1_mega.trainer.rollout import generate_and_score

    cfg = load_config(cfg_file, [f"model.hf_path={policy}"])
    processor = load_processor(str(policy), cfg.data.min_pixels, cfg.data.max_pixels)
    engine = LocalEngine(policy)
    found = {}
    for split in ("train", "val"):
        data = RLDataset([str(data_dir / f"{split}.jsonl")], cfg.data, processor, name=split)
        if len(data) != len(_read_rows(data_dir / f"{split}.jsonl")):
            raise SystemExit(f"{split}: {data.report} - every candidate must be usable")
        rows, chunk = [], 32
        for start in range(0, len(data), chunk):
            idx = list(range(start, min(start + chunk, len(data))))
            r = generate_and_score(
                engine, data, idx, samples, cfg.rollout, cfg.reward, seed=7 + start, temperature=1.0
            )
            for k, i in enumerate(idx):
                acc = r.accuracy[k * samples : (k + 1) * samples]
                lens = [len(x) for x in r.response_ids[k * samples : (k + 1) * samples]]
                rows.append({"row": i, "pass_rate": sum(acc) / samples, "mean_tokens": sum(lens) / samples})
            print(f"[exp] difficulty {split}: {len(rows)}/{len(data)} prompts", flush=True)
        found[split] = rows
    engine.shutdown()
    cache.write_text(json.dumps(found))
    return found


def difficulty_class(pass_rate: float) -> str:
    return "solved" if pass_rate == 1.0 else "unsolved" if pass_rate == 0.0 else "between"


def compose_pools(out: Path, data_dir: Path, difficulty: dict, pool: int, val: int, mix: tuple) -> dict:
    """Write pool_train.jsonl and pool_val.jsonl beside the candidates: `pool` / `val` prompts with the class
    shares `mix` (solved, unsolved, between), the first candidates of each class in file order (the candidates
    are i.i.d. draws). Raises SystemExit naming the class that has too few candidates."""
    sizes = {"train": pool, "val": val}
    info = {"mix": dict(zip(CLASSES, mix)), "candidates": {}}
    for split, size in sizes.items():
        rows = _read_rows(data_dir / f"{split}.jsonl")
        by_class = {
            c: [d for d in difficulty[split] if difficulty_class(d["pass_rate"]) == c] for c in CLASSES
        }
        info["candidates"][split] = {c: len(v) for c, v in by_class.items()}
        want = _shares(size, mix)
        chosen = []
        for c in CLASSES:
            if len(by_class[c]) < want[c]:
                raise SystemExit(
                    f"{split}: {want[c]} '{c}' prompts wanted but the cold-start policy leaves only "
                    f"{len(by_class[c])} of {len(rows)} candidates {c}: raise --candidates or change --mix"
                )
            chosen += by_class[c][: want[c]]
        chosen.sort(key=lambda d: d["row"])
        path = data_dir / f"pool_{split}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for d in chosen:
                f.write(json.dumps({**rows[d["row"]], "cold_start_pass_rate": d["pass_rate"]}) + "\n")
        info[split] = str(path)
        info[f"{split}_prompts"] = len(chosen)
        info[f"{split}_classes"] = want
        if split == "train":
            info["mean_response_tokens"] = sum(d["mean_tokens"] for d in chosen) / len(chosen)
            info["cold_start_pass_rate"] = sum(d["pass_rate"] for d in chosen) / len(chosen)
        else:
            info["val_cold_start_pass_rate"] = sum(d["pass_rate"] for d in chosen) / len(chosen)
    (out / "pools.json").write_text(json.dumps(info, indent=1))
    return info


def _shares(size: int, mix: tuple) -> dict:
    """Integer counts per class summing to size (largest remainders)."""
    raw = [size * m for m in mix]
    counts = [math.floor(x) for x in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: size - sum(counts)]:
        counts[i] += 1
    return dict(zip(CLASSES, counts))


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- the runs ------------------------------------------------------------------------------------------------


def finished(run_dir: Path) -> bool:
    """A run is done when it logged its last step (budget reached) with a validation."""
    from mmr1_mega.trainer.logger import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    return any(r.get("train/last_step") == 1.0 and "val/pass1" in r for r in read_metrics(path))


def run_all(todo, jobs: int, out: Path) -> int:
    """Run the GRPO runs as `jobs` concurrent processes (cores / jobs threads each); returns the first failure's
    exit code. A run's wall time is written to <run_dir>/wall_seconds."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    (out / "runs").mkdir(exist_ok=True)
    pending, running, failed = list(todo), [], 0
    while pending or running:
        while pending and len(running) < jobs and not failed:
            name, seed, run_dir, argv_run = pending.pop(0)
            log = open(out / "runs" / f"{name}-seed{seed}.log", "a")  # noqa: SIM115 - closed when it ends
            cmd = [sys.executable, "-m", "mmr1_mega.cli", "train", *argv_run]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((name, seed, run_dir, proc, log, time.perf_counter()))
            print(f"[exp] started {name} seed {seed} (log {log.name})", flush=True)
        if not running:
            break
        time.sleep(1)
        for item in list(running):
            name, seed, run_dir, proc, log, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            wall = time.perf_counter() - t0
            if proc.returncode == 0:
                prev = (
                    float((run_dir / "wall_seconds").read_text())
                    if (run_dir / "wall_seconds").is_file()
                    else 0
                )
                (run_dir / "wall_seconds").write_text(f"{prev + wall:.1f}")
            print(f"[exp] {name} seed {seed}: exit code {proc.returncode} after {wall:.0f} s", flush=True)
            failed = failed or proc.returncode
    return failed


def collect(run_dir: Path, budget: int) -> dict:
    """One run's curves (per key: (step, rollout tokens at that step, value)) and its final numbers; the
    validation pass@1 also against the run's training seconds (the sum of its steps' seconds, VAS refreshes
    included, validation not)."""
    from mmr1_mega.trainer.logger import read_metrics

    recs = read_metrics(run_dir / "metrics.jsonl")
    curves = {
        k: [(r["step"], r.get("rollout/total_tokens", 0.0), r[k]) for r in recs if k in r] for k in CURVE_KEYS
    }
    seconds, elapsed = {0: 0.0}, 0.0
    for step, _, v in curves["perf/step_seconds"]:
        elapsed += v
        seconds[step] = elapsed
    last = recs[-1]
    val = [(tok, v) for _, tok, v in curves["val/pass1"]]
    wall = run_dir / "wall_seconds"
    return {
        "curves": curves,
        "steps": last["step"],
        "tokens": last.get("rollout/total_tokens", 0.0),
        "final_pass1": last.get("val/pass1"),
        "final_pass1_se": last.get("val/pass1_se"),
        "final_greedy": last.get("val/accuracy"),
        "auc_pass1": auc(val, budget),
        "train_seconds": elapsed,
        "pass1_by_seconds": [(seconds[step], v) for step, _, v in curves["val/pass1"]],
        "wall_seconds": float(wall.read_text()) if wall.is_file() else None,
    }


# ---- statistics ----------------------------------------------------------------------------------------------


def auc(points: list[tuple[float, float]], budget: float) -> float:
    """Area under a curve given at (tokens, value) points, over [0, budget], divided by the budget: the
    trapezoid rule, the curve held at its last value up to the budget (a run stops just past it)."""
    pts = sorted(points)
    if not pts:
        return float("nan")
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        a, b = min(x0, budget), min(x1, budget)
        if b > a:
            area += (b - a) * (y0 + (y1 - y0) * ((a + b) / 2 - x0) / (x1 - x0))
    if pts[-1][0] < budget:
        area += (budget - pts[-1][0]) * pts[-1][1]
    return area / budget


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its two-sided 95 % t-interval (nan for fewer than 2 values)."""
    m = len(values)
    mean = sum(values) / m if m else float("nan")
    if m < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (m - 1))
    return mean, T975.get(m - 1, 1.96) * sd / math.sqrt(m)


def at(points: list[tuple[float, float]], x: float) -> float:
    """A curve given at (x, value) points, linearly interpolated at x (held at its ends)."""
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


def summarise(results: dict) -> dict:
    """Per setting: mean and 95 % CI over seeds of the final pass@1, greedy accuracy, AUC and the pass@1 at
    equal training time (the shortest run's training seconds, every run's pass@1 curve interpolated there); the
    paired difference to uniform (same seeds) of each; mean steps, tokens, training and wall seconds."""
    runs = results["runs"]
    settings = sorted({k.split("/")[0] for k in runs}, key=list(SETTINGS).index)
    by = {s: {int(k.split("seed")[1]): v for k, v in runs.items() if k.split("/")[0] == s} for s in settings}
    equal_time = min(r["train_seconds"] for r in runs.values())
    for r in runs.values():
        r["pass1_at_equal_time"] = at(r["pass1_by_seconds"], equal_time)
    rows = {"_equal_time_seconds": equal_time}
    for s in settings:
        row = {"seeds": len(by[s])}
        for metric in METRICS:
            row[metric] = mean_ci([r[metric] for r in by[s].values()])
            if "uniform" in by and s != "uniform":
                common = sorted(set(by[s]) & set(by["uniform"]))
                row[f"{metric}_vs_uniform"] = mean_ci(
                    [by[s][k][metric] - by["uniform"][k][metric] for k in common]
                )
        for key, name in MECHANISM.items():  # per run: the mean over its steps
            row[name] = mean_ci(
                [sum(x[2] for x in r["curves"][key]) / len(r["curves"][key]) for r in by[s].values()]
            )
        for key in ("steps", "tokens", "train_seconds", "wall_seconds"):
            vals = [r[key] for r in by[s].values() if r.get(key) is not None]
            row[key] = sum(vals) / len(vals) if vals else None
        rows[s] = row
    return rows


METRICS = ("final_pass1", "final_greedy", "auc_pass1", "pass1_at_equal_time")
# the paper's mechanism (Fig. 2): per-step training metrics, averaged over a run's steps
MECHANISM = {
    "actor/grad_norm": "grad_norm",
    "actor/pg_clipfrac_high": "clipfrac_high",
    "reward/zero_std_group_frac": "zero_std_groups",
}


def summary_markdown(rows: dict, protocol: dict) -> str:
    def ci(pair, scale=100.0):
        mean, half = pair
        return f"{scale * mean:.1f} ± {scale * half:.1f}"

    lines = [
        f"budget {protocol['budget_tokens']} rollout tokens; mean ± 95 % t-interval over seeds {protocol['seeds']}; "
        f"equal training time: {rows['_equal_time_seconds']:.0f} s",
        "",
        "| setting | val pass@1 at budget (primary) | Δ vs uniform | greedy acc. at budget | Δ vs uniform "
        "| pass@1 AUC over budget | Δ vs uniform | pass@1 at equal time | Δ vs uniform | steps | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, r in rows.items():
        if s.startswith("_"):
            continue
        cells = [s]
        for metric in METRICS:
            cells.append(ci(r[metric]))
            cells.append(ci(r[f"{metric}_vs_uniform"]) if f"{metric}_vs_uniform" in r else "—")
        cells.append(f"{r['steps']:.1f}")
        cells.append(f"{r['train_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mechanism (per run, the mean over its steps; then mean ± 95 % t-interval over seeds):",
        "",
        "| setting | grad norm | clip fraction (high) | groups with zero reward variance |",
        "|---|---|---|---|",
    ]
    for s, r in rows.items():
        if not s.startswith("_"):
            g, c, z = (r[m] for m in MECHANISM.values())
            lines.append(
                f"| {s} | {g[0]:.3f} ± {g[1]:.3f} | {c[0]:.4f} ± {c[1]:.4f} | {z[0]:.3f} ± {z[1]:.3f} |"
            )
    return "\n".join(lines)


def plot(results: dict, png: Path) -> Path:
    """MMR1 Fig. 2's panels against rollout tokens: grad norm, clip fraction, validation pass@1 (and greedy),
    plus the zero-variance group share. Per setting: the mean over seeds (per-step curves binned over tokens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    budget = results["protocol"]["budget_tokens"]
    panels = [
        ("actor/grad_norm", "grad norm"),
        ("actor/pg_clipfrac_high", "clip fraction (high)"),
        ("reward/zero_std_group_frac", "groups with zero reward variance"),
        ("val/pass1", "validation pass@1 (T=1 samples)"),
        ("val/accuracy", "validation accuracy (greedy)"),
    ]
    settings = sorted({k.split("/")[0] for k in results["runs"]}, key=list(SETTINGS).index)
    fig, grid = plt.subplots(2, 3, figsize=(16, 8.5))
    edges = np.linspace(0, budget * 1.05, 13)
    for ax, (key, title) in zip(grid.flat, panels):
        for s in settings:
            runs = [
                v["curves"][key]
                for k, v in results["runs"].items()
                if k.split("/")[0] == s and v["curves"][key]
            ]
            if not runs:
                continue
            if key.startswith("val/"):  # few points per run, at similar token counts: mean per evaluation
                n = min(len(r) for r in runs)
                x = np.mean([[p[1] for p in r[:n]] for r in runs], axis=0)
                y = np.mean([[p[2] for p in r[:n]] for r in runs], axis=0)
            else:  # per-step values binned over tokens, the mean of each bin over all seeds' steps
                tok = np.concatenate([[p[1] for p in r] for r in runs])
                val = np.concatenate([[p[2] for p in r] for r in runs])
                which = np.digitize(tok, edges)
                keep = [b for b in range(1, len(edges)) if (which == b).any()]
                x = np.array([tok[which == b].mean() for b in keep])
                y = np.array([val[which == b].mean() for b in keep])
            ax.plot(x, y, marker="o", ms=3, label=f"{s} ({len(runs)})")
        ax.set_title(title)
        ax.set_xlabel("rollout tokens (training + VAS refresh)")
        ax.axvline(budget, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    table = grid.flat[len(panels)]
    table.axis("off")
    rows = summarise(results)
    text = ["final pass@1 (%), mean ± 95 % CI", ""]
    for s, r in rows.items():
        if s.startswith("_"):
            continue
        text.append(f"{s:<16}{100 * r['final_pass1'][0]:6.1f} ± {100 * r['final_pass1'][1]:.1f}")
    table.text(0, 0.5, "\n".join(text), family="monospace", fontsize=9, va="center")
    fig.suptitle("VAS vs uniform vs dynamic sampling at equal rollout compute (mean over seeds)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    sys.exit(main())
