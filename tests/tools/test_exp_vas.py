"""tools/exp_vas.py: its statistics against independent computations, the difficulty-filtered pools, and a
whole (tiny) experiment: runs, resume, results, summary and plot."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("exp_vas", ROOT / "tools" / "exp_vas.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


exp = _tool()


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30])
def test_the_t_quantiles_are_where_students_t_cdf_is_0_975(df):
    # CDF by numerical integration of Student's t density (an independent computation of the table's values);
    # a quantile rounded to 3 decimals moves the CDF by at most density(q) * 5e-4 < 2e-4
    q = exp.T975[df]
    x = np.linspace(0.0, q, 200_001)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    density = c * (1 + x**2 / df) ** (-(df + 1) / 2)
    cdf = 0.5 + float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(x)))
    assert abs(cdf - 0.975) < 3e-4, cdf


def test_mean_ci_is_the_t_interval():
    rng = random.Random()
    vals = [rng.random() for _ in range(5)]
    mean, half = exp.mean_ci(vals)
    sd = float(np.std(vals, ddof=1))
    assert mean == pytest.approx(float(np.mean(vals)), rel=1e-12)
    assert half == pytest.approx(2.776 * sd / math.sqrt(5), rel=1e-12)
    assert math.isnan(exp.mean_ci([0.3])[1])


def test_auc_is_the_trapezoid_area_over_the_budget_divided_by_it():
    rng = random.Random()
    budget = 1000.0
    xs = sorted(rng.uniform(1, 900) for _ in range(4))
    pts = [(0.0, rng.random())] + [(x, rng.random()) for x in xs] + [(1040.0, rng.random())]
    # reference: numpy's trapezoid over the piecewise-linear curve on a grid holding its breakpoints (exact there)
    grid = np.unique(np.concatenate([np.linspace(0, budget, 1001), [x for x, _ in pts if x < budget]]))
    ref = np.trapezoid(np.interp(grid, [p[0] for p in pts], [p[1] for p in pts]), grid) / budget
    assert exp.auc(pts, budget) == pytest.approx(float(ref), abs=1e-9)
    # a curve that stops short of the budget is held at its last value
    assert exp.auc([(0.0, 0.2), (500.0, 0.6)], budget) == pytest.approx((500 * 0.4 + 500 * 0.6) / 1000)


def test_pools_have_the_asked_shares_and_a_short_class_is_named(tmp_path):
    rng = random.Random()
    rows = [{"id": f"r{i}", "problem": "p", "answer": "1", "images": []} for i in range(60)]
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rates = [1.0] * 20 + [0.0] * 20 + [0.5] * 20
    rng.shuffle(rates)
    difficulty = {
        s: [{"row": i, "pass_rate": p, "mean_tokens": 10.0} for i, p in enumerate(rates)]
        for s in ("train", "val")
    }
    info = exp.compose_pools(tmp_path, tmp_path, difficulty, 30, 12, (0.2, 0.3, 0.5))
    chosen = [json.loads(x) for x in Path(info["train"]).read_text().splitlines()]
    got = [exp.difficulty_class(r["cold_start_pass_rate"]) for r in chosen]
    assert {c: got.count(c) for c in exp.CLASSES} == {"solved": 6, "unsolved": 9, "between": 15}
    assert info["val_classes"] == {
        "solved": 2,
        "unsolved": 4,
        "between": 6,
    }  # 2.4 / 3.6 / 6: largest remainders
    assert all(r["id"] == rows[int(r["id"][1:])]["id"] for r in chosen)
    with pytest.raises(SystemExit, match="'between' prompts wanted"):
        exp.compose_pools(tmp_path, tmp_path, difficulty, 50, 12, (0.0, 0.4, 0.6))


@pytest.mark.distributed
def test_a_tiny_experiment_runs_every_step_reuses_finished_runs_and_reports(tmp_path, capsys):
    import yaml

    from tests.trainer.tiny_task import TINY, grpo_config

    grpo = grpo_config(tmp_path / "unused", Path("unused"), {"train": "", "val": "", "sft_train": ""})
    grpo["model"].pop("hf_path")
    grpo["train"].pop("output_dir")
    grpo["data"] = {"min_pixels": 3136, "max_pixels": 3136, "max_prompt_len": 256}
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 0, **TINY, "grpo": grpo}))
    # a random tiny model solves nothing: a pool of unsolved prompts
    args = [
        "--out",
        str(tmp_path / "exp"),
        "--config",
        str(cfg),
        "--candidates",
        "12",
        "--pool",
        "8",
        "--val",
        "4",
    ]
    args += ["--mix", "0", "1", "0", "--difficulty-samples", "2", "--budget-steps", "2", "--evals", "1"]
    args += [
        "--val-samples",
        "2",
        "--seeds",
        "0",
        "1",
        "--settings",
        "uniform",
        "vas-0.5-online",
        "--jobs",
        "2",
    ]
    assert exp.main(args) == 0
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    budget = results["protocol"]["budget_tokens"]
    assert sorted(results["runs"]) == [
        "uniform/seed0",
        "uniform/seed1",
        "vas-0.5-online/seed0",
        "vas-0.5-online/seed1",
    ]
    for run in results["runs"].values():
        tokens = [t for _, t, _ in run["curves"]["rollout/total_tokens"]]
        assert tokens[-1] >= budget and (len(tokens) < 2 or tokens[-2] < budget)  # stopped at the budget
        assert run["curves"]["val/pass1"][0][0] == 0 and run["final_pass1"] is not None
        assert 0 <= run["auc_pass1"] <= 1 and run["wall_seconds"] > 0
    summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert summary["vas-0.5-online"]["seeds"] == 2 and "final_pass1_vs_uniform" in summary["vas-0.5-online"]
    assert "| uniform |" in (tmp_path / "exp" / "summary.md").read_text()
    assert (tmp_path / "exp" / "vas_evidence.png").stat().st_size > 10_000
    capsys.readouterr()
    assert exp.main(args) == 0  # nothing left to run
    assert "4 of 4 runs already finished; running 0" in capsys.readouterr().out


def test_equal_time_values_are_the_curves_interpolated_at_the_shortest_runs_training_time():
    rng = random.Random()
    pts = sorted((rng.uniform(0, 100), rng.random()) for _ in range(5))
    for x in (rng.uniform(pts[0][0], pts[-1][0]), pts[0][0] - 1, pts[-1][0] + 1):
        assert exp.at(pts, x) == pytest.approx(float(np.interp(x, *zip(*pts))), abs=1e-12)
