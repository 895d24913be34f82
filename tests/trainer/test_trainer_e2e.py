"""End to end on CPU: cold-start SFT, then GRPO + VAS through every phase at TP=2 and at PP=2, exact resume
after a kill, and bad-data handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmr1_mega.trainer.checkpoint import complete_checkpoints
from mmr1_mega.trainer.logger import read_metrics
from mmr1_mega.trainer.main import sft_main, train_main
from tests.trainer.tiny_task import grpo_config, write_config

pytestmark = pytest.mark.distributed

PHASE_KEYS = [
    "reward/mean",
    "reward/accuracy",
    "reward/format",
    "response/length_mean",
    "actor/grad_norm",
    "actor/pg_clipfrac_high",
    "actor/kl",
    "vas/vps_mean",
    "time/rollout",
    "time/logprob",
    "time/train",
    "time/sync",
    "perf/tokens_per_second",
    "rollout/logp_mismatch_abs_mean",
    "rollout/logp_mismatch_abs_max",
    "rollout/logp_mismatch_k3",
]


def _run(task, tmp_path, name, *overrides, **sections):
    root, model_dir, paths = task
    out = tmp_path / name
    cfg = write_config(tmp_path / f"{name}.yaml", grpo_config(out, model_dir, paths, **sections))
    assert train_main([str(cfg), *overrides]) == 0
    return out


def _check_run(out: Path, steps: int):
    recs = read_metrics(out / "metrics.jsonl")
    assert any(r.get("reward/std", 0) > 0 for r in recs), "rollouts never earned different rewards"
    assert [r["step"] for r in recs] == list(range(0, steps + 1))
    assert "val/accuracy" in recs[0] and "val/accuracy" in recs[-1]
    for r in recs[1:]:
        missing = [k for k in PHASE_KEYS if k not in r]
        assert not missing, f"step {r['step']} lacks {missing}"
        assert r["actor/update_skipped"] == 0.0
        assert 0 <= r["rollout/logp_mismatch_abs_mean"] <= r["rollout/logp_mismatch_abs_max"]
        assert r["rollout/logp_mismatch_k3"] >= 0
    assert [p.name for p in complete_checkpoints(out)] == ["step_000002", "step_000003"]
    assert (out / "config.yaml").is_file()


def test_grpo_with_tensor_parallel_2(task, tmp_path):
    _check_run(
        _run(task, tmp_path, "tp2", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true"), 3
    )


def test_grpo_with_pipeline_parallel_2(task, tmp_path):
    _check_run(_run(task, tmp_path, "pp2", "parallel.pipeline_parallel=2"), 3)


def test_sft_exports_a_policy_grpo_can_start_from(task, tmp_path):
    root, model_dir, paths = task
    out = tmp_path / "sft"
    cfg = write_config(tmp_path / "sft.yaml", grpo_config(out, model_dir, paths))
    assert sft_main([str(cfg), f"sft.export_dir={out / 'hf'}"]) == 0
    recs = read_metrics(out / "sft" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2] and all(r["sft/loss"] > 0 for r in recs)
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(out / "hf")
    assert (out / "hf" / "tokenizer.json").is_file()


COMPARED = ("reward/", "actor/loss", "actor/grad_norm", "actor/pg_", "actor/kl", "vas/", "val/", "response/")


def _comparable(rec):
    return {
        k: v for k, v in rec.items() if k.startswith(COMPARED) and "seconds" not in k and not k.endswith("_s")
    }


def test_run_killed_and_resumed_gives_the_same_metrics(task, tmp_path):
    root, model_dir, paths = task
    sections = dict(
        train={"steps": 4, "val_every_steps": 2}, checkpoint={"save_every_steps": 2, "keep_last": 3}
    )
    full = tmp_path / "full"
    write_config(tmp_path / "full.yaml", grpo_config(full, model_dir, paths, **sections))
    assert train_main([str(tmp_path / "full.yaml")]) == 0

    killed = tmp_path / "killed"
    logged = grpo_config(killed, model_dir, paths, **sections)
    logged["log"] = {"wandb": "offline", "tensorboard": True}
    cfg = write_config(tmp_path / "killed.yaml", logged)
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmr1_mega.cli", "train", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # kill once step 3 is logged (checkpoint 2 done)
        f = killed / "metrics.jsonl"
        if f.is_file() and any(json.loads(line)["step"] == 3 for line in f.read_text().splitlines() if line):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p.name for p in complete_checkpoints(killed)] == ["step_000002"]

    assert train_main([str(cfg), "checkpoint.resume=auto"]) == 0
    ref = {r["step"]: _comparable(r) for r in read_metrics(full / "metrics.jsonl")}
    assert any(ref[s]["actor/grad_norm"] > 1e-4 for s in (3, 4)), (
        "nothing was learned: the comparison is void"
    )
    got = {r["step"]: _comparable(r) for r in read_metrics(killed / "metrics.jsonl")}
    for step in (3, 4):
        assert got[step] == ref[step], f"step {step} differs after resume"
    # the resumed run continues the same wandb run, and TensorBoard's step axis has each step once
    run_id = (killed / "wandb_run_id").read_text().strip()
    offline_runs = sorted(p.name for p in (killed / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(name.endswith(run_id) for name in offline_runs)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(killed / "tensorboard")).Reload()
    steps = [e.step for e in events.Scalars("actor/grad_norm")]
    assert steps == [1, 2, 3, 4], steps


def test_bad_records_are_skipped_and_counted(task, tmp_path, caplog):
    root, model_dir, paths = task
    lines = Path(paths["train"]).read_text().splitlines()
    bad = [
        json.dumps({"problem": "", "answer": "1", "images": []}),
        json.dumps({"problem": "x", "images": []}),
        json.dumps({"problem": "<image>how many?", "answer": "2", "images": ["missing.png"]}),
        "{not json",
    ]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(lines[:12] + bad) + "\n")
    # the images of the original rows are relative to the task folder
    (tmp_path / "images").symlink_to(Path(paths["train"]).parent / "images")
    out = _run(
        task,
        tmp_path,
        "mixed",
        f"data.train_files=[{mixed}]",
        "train.steps=1",
        "checkpoint.save_every_steps=0",
    )
    assert (out / "metrics.jsonl").is_file()
    from mmr1_mega.data.config import DataConfig
    from mmr1_mega.data.rl_dataset import RLDataset

    ds = RLDataset([str(mixed)], DataConfig())
    assert len(ds) == 12 and ds.report.skipped == 4


def test_wholly_bad_file_is_a_clear_error_before_training(task, tmp_path, capsys):
    root, model_dir, paths = task
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "", "answer": ""}\n{"nothing": 1}\n')
    out = tmp_path / "never"
    cfg = write_config(
        tmp_path / "bad.yaml", grpo_config(out, model_dir, paths, data={"train_files": [str(bad)]})
    )
    rc = train_main([str(cfg)])
    assert rc != 0
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "no usable record" in err
    assert not (out / "checkpoints").exists()


def test_missing_model_and_data_are_clear_errors(task, tmp_path, capsys):
    root, model_dir, paths = task
    cfg = write_config(tmp_path / "c.yaml", grpo_config(tmp_path / "o", model_dir, paths))
    assert train_main([str(cfg), f"model.hf_path={tmp_path / 'nope'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train_main([str(cfg), f"data.train_files=[{tmp_path / 'none.jsonl'}]"]) == 2
    assert "data file" in capsys.readouterr().err


def test_eval_scores_an_hf_model_and_a_trainer_checkpoint(task, tmp_path, capsys):
    from mmr1_mega.eval.main import main as eval_main

    root, model_dir, paths = task
    args = ["--data", paths["val"], "--max-problems", "4", "--max-new-tokens", "24"]
    assert eval_main(["--model", str(model_dir), *args, "--out", str(tmp_path / "r.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.rfind("{\n") :])["samples"] == 4
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(set(r) >= {"id", "answer", "response", "accuracy", "format"} for r in rows)

    out = _run(task, tmp_path, "for-eval", "train.steps=2", "checkpoint.save_every_steps=2")
    capsys.readouterr()
    step = complete_checkpoints(out)[-1]
    assert (
        eval_main(
            ["--checkpoint", str(step), "--base", str(model_dir), *args, "--out", str(tmp_path / "c1.jsonl")]
        )
        == 0
    )
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.rfind("{\n") :])
    assert result["problems"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    # exported by two tensor-parallel ranks: the same weights, so the same greedy answers
    out2 = str(tmp_path / "c2.jsonl")
    assert (
        eval_main(
            [
                "--checkpoint",
                str(step),
                "--base",
                str(model_dir),
                *args,
                "--out",
                out2,
                "--export-parallel",
                "2x1",
            ]
        )
        == 0
    )
    assert (tmp_path / "c1.jsonl").read_text() == (tmp_path / "c2.jsonl").read_text()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_demo_command_completes_with_a_small_setting(tmp_path, family):
    import copy

    import yaml

    from mmr1_mega.trainer.demo import main as demo_main
    from tests.trainer.tiny_task import TINY

    tiny = copy.deepcopy(TINY)
    pixels = 3136  # 2 x 2 cells of 28 pixels: one merged token each with patch 14
    if family == "qwen3_vl":  # patch 16: cells of 32 pixels
        pixels = 4096
        tiny["synthetic"].update(cell=32, min_pixels=pixels, max_pixels=pixels)
    tiny["model"]["family"] = family
    grpo = grpo_config(tmp_path / "unused", Path("unused"), {"train": "", "val": "", "sft_train": ""})
    for key in ("hf_path",):
        grpo["model"].pop(key)
    grpo["data"] = {"min_pixels": pixels, "max_pixels": pixels, "max_prompt_len": 256}
    grpo["train"].pop("output_dir")
    grpo["sft"] = {"steps": 30, "batch_size": 16, "lr": 1.0e-2, "warmup_steps": 0}
    grpo["train"].update(steps=2, val_every_steps=2)
    grpo["checkpoint"] = {"save_every_steps": 2, "keep_last": 1}
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 0, **tiny, "grpo": grpo}))
    assert demo_main(["--out", str(tmp_path / "demo"), "--config", str(cfg)]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [s for s, _ in summary["val_curve"]] == [0, 2]
    # what ran is written down: under the test suite's TRITON_INTERPRET=1, the Triton kernels interpreted
    assert summary["grpo_loss_implementation"] == ["triton-interpreter"]
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "demo" / "vas.png").stat().st_size > 10_000


def test_phase_progress_is_inert_off_rank_0_and_tracks_the_phase():
    from mmr1_mega.trainer.logger import PhaseProgress

    off = PhaseProgress()
    off.update(3)
    off.phase("train")
    off.stop()
    assert off.current_phase == "train"
    bar = PhaseProgress("GRPO", total=4)
    for step, name in enumerate(("rollout + reward", "train", "weight sync"), 1):
        bar.phase(name)
        bar.update(step)
        assert bar.current_phase == name
        if bar._progress is not None:
            task = bar._progress.tasks[0]
            assert (task.completed, task.description) == (step, name)
    bar.stop()
    bar.stop()  # idempotent


def test_the_shipped_demo_learns_sft_reads_the_image_and_grpo_beats_it(tmp_path):
    """The README's demo with its own config, GRPO cut to 10 steps (about 3.5 minutes): SFT must have learned
    to count (well above the ~30 % a policy blind to the image gets), and 10 GRPO steps must already add 5 points."""
    from mmr1_mega.trainer.demo import main as demo_main

    assert demo_main(["--out", str(tmp_path / "demo"), "train.steps=10"]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [s for s, _ in summary["val_curve"]] == [0, 10]
    assert summary["val_accuracy_after_sft"] >= 0.6, summary
    assert summary["improvement_points"] >= 5.0, summary


def test_grpo_with_dynamic_sampling_keeps_zero_variance_groups_out_of_the_loss(task, tmp_path):
    out = _run(
        task,
        tmp_path,
        "dyn",
        "train.world_size=2",
        "train.dynamic_sampling=true",
        "train.max_sampling_rounds=3",
    )
    recs = read_metrics(out / "metrics.jsonl")[1:]
    assert len(recs) == 3
    for r in recs:
        assert r["dynamic/zero_std_groups_in_batch"] == 0
        assert r["dynamic/groups_generated"] >= 4 and r["dynamic/groups_kept"] <= 4
        assert 1 <= r["dynamic/rounds"] <= 3
        # rounds stop once the batch is full
        assert r["dynamic/rounds"] == 1 or r["dynamic/groups_generated"] > 4
        assert ("actor/loss" in r) == (r["dynamic/groups_kept"] > 0)  # an empty batch trains on nothing
        assert r["rollout/response_tokens"] > 0


def test_async_rollout_trains_one_step_off_policy_with_truncated_importance_sampling(task, tmp_path):
    out = _run(
        task,
        tmp_path,
        "async",
        "train.world_size=2",
        "rollout.async_steps=1",
        "loss.tis_cap=2.0",
        "train.dynamic_sampling=true",
    )
    recs = read_metrics(out / "metrics.jsonl")[1:]
    # step 1 is generated by the starting policy; later steps by the policy one optimizer step behind
    assert [r["rollout/staleness"] for r in recs] == [0.0, 1.0, 1.0]
    for r in recs:
        assert r["dynamic/zero_std_groups_in_batch"] == 0
        if r["dynamic/groups_kept"] > 0:
            assert 0 < r["actor/tis_weight_mean"] and 0 <= r["actor/tis_capped_frac"] <= 1
            assert r["actor/update_skipped"] == 0.0
    assert [p.name for p in complete_checkpoints(out)] == ["step_000002", "step_000003"]


def test_grpo_with_fp8_rollout_weights_calibrates_quantizes_every_sync_and_corrects_with_tis(task, tmp_path):
    """rollout.weight_dtype=fp8 through the trainer at TP2: the engines' FP8 checkpoint is written at start
    (modelopt format, activation scales calibrated on training prompts), every sync sends FP8 weights, and
    TIS weighs tokens by actor / engine. The local engine is the FP8 stand-in (weights rounded to FP8); the
    real vLLM run is tests/engines/test_cli_engines.py's."""
    out = _run(
        task,
        tmp_path,
        "fp8",
        "parallel.tensor_parallel=2",
        "rollout.weight_dtype=fp8",
        "rollout.fp8_format=modelopt",
        "rollout.fp8_calib_prompts=4",
        "loss.tis_cap=2.0",
    )
    _check_run(out, 3)
    config = json.loads((out / "engine-fp8" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "modelopt"
    recs = read_metrics(out / "metrics.jsonl")[1:]
    for r in recs:
        # the engine samples from FP8-rounded weights in bf16: its log-probs differ from the fp32 actor's
        assert r["rollout/logp_mismatch_abs_mean"] > 0
        assert 0 < r["actor/tis_weight_mean"] and 0 <= r["actor/tis_capped_frac"] <= 1


def test_a_rollout_token_budget_counts_refresh_rollouts_and_ends_the_run_with_validation(task, tmp_path):
    # vas.update_every_steps=2 over half the pool: refreshes before steps 1 and 3 (their rollouts count)
    first = _run(
        task, tmp_path, "budget1", "train.steps=20", "train.max_rollout_tokens=1", "train.val_samples=3"
    )
    (r1,) = read_metrics(first / "metrics.jsonl")[1:]  # one step: its tokens already pass a budget of 1
    assert r1["rollout/refresh_tokens"] > 0 and r1["train/last_step"] == 1.0
    assert r1["rollout/total_tokens"] == r1["rollout/response_tokens"] + r1["rollout/refresh_tokens"]
    assert 0 <= r1["val/pass1"] <= 1 and r1["val/pass1_se"] >= 0 and r1["val/prompts"] == 4
    assert [p.name for p in complete_checkpoints(first)] == ["step_000001"]
    # the same run with a budget one token past step 1's total stops after step 2
    budget = int(r1["rollout/total_tokens"]) + 1
    second = _run(task, tmp_path, "budget2", "train.steps=20", f"train.max_rollout_tokens={budget}")
    recs = read_metrics(second / "metrics.jsonl")[1:]
    assert [r["step"] for r in recs] == [1, 2] and recs[0]["rollout/total_tokens"] == r1[
        "rollout/total_tokens"
    ]
    assert recs[0]["train/last_step"] == 0.0 and recs[1]["train/last_step"] == 1.0
    assert (
        recs[1]["rollout/total_tokens"]
        == recs[0]["rollout/total_tokens"] + recs[1]["rollout/response_tokens"]
    )
    assert "val/accuracy" in recs[1] and [p.name for p in complete_checkpoints(second)] == ["step_000002"]


def test_vas_without_refreshes_learns_vps_from_the_training_rollouts_alone(task, tmp_path):
    out = _run(task, tmp_path, "online", "vas.refresh=false", "vas.online_update=true")
    recs = read_metrics(out / "metrics.jsonl")[1:]
    assert [r["rollout/refresh_tokens"] for r in recs] == [0.0, 0.0, 0.0]  # no rollouts beyond training's
    assert recs[-1]["rollout/total_tokens"] == sum(r["rollout/response_tokens"] for r in recs)
    assert recs[-1]["vas/vps_mean"] > 0  # VPS from what training generated (0 everywhere before any batch)
