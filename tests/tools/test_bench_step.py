"""`mmr1-mega bench step` end to end at toy sizes: the trainer runs, and the JSON's phases, FLOPs, MFU,
throughput, padding and memory are what its definitions say; --compare puts two results side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mmr1_mega.cli import main as cli
from mmr1_mega.trainer.demo import DEMO_CONFIG

pytestmark = pytest.mark.slow


def _toy_demo(tmp_path: Path) -> Path:
    demo = yaml.safe_load(Path(DEMO_CONFIG).read_text())
    demo["model"].update(hidden_size=64, num_heads=2, num_kv_heads=2, intermediate_size=128)  # TP2 fits
    demo["grpo"]["train"].update(prompts_per_step=4, micro_batch_size=3, ppo_mini_batches=2)
    demo["grpo"]["rollout"].update(n_samples=4, max_new_tokens=16)
    demo["grpo"]["vas"].update(n_rollouts=2)
    path = tmp_path / "toy_demo.yaml"
    path.write_text(yaml.safe_dump(demo))
    return path


def _bench(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    rc = cli(["bench", "step", str(_toy_demo(tmp_path)), "--steps", "1", "--warmup", "0", "--out", str(out),
              "--work", str(tmp_path / name), "--mean-response-tokens", "4", *args])  # fmt: skip
    assert rc == 0
    return json.loads(out.read_text())


def test_bench_step_reports_what_it_measured_padded_and_packed(tmp_path, capsys):
    padded = _bench(tmp_path, "padded")
    packed = _bench(
        tmp_path, "packed", "parallel.tensor_parallel=2", "parallel.sequence_parallel=true",
        "train.pack_sequences=true", "train.max_tokens_per_micro_batch=300",
    )  # fmt: skip
    for r, world in ((padded, 1), (packed, 2)):
        assert r["layout"]["world_size"] == world and r["steps"]["timed"] == 1
        # the step is its five phases (one timed step: the medians are that step's values)
        shares = sum(r["phases"][p]["share"] for p in ("sample", "rollout", "logprob", "train", "sync"))
        assert shares == pytest.approx(1.0, abs=1e-9)
        assert r["phases"]["generate"]["seconds"] <= r["phases"]["rollout"]["seconds"]
        # FLOPs: one forward of the step batch; old + reference log-probs (kl_coef > 0) and a train pass
        f = r["flops"]
        assert f["forward_per_step"] > 0
        assert f["logprob_phase"] == 2 * f["forward_per_step"]
        assert f["train_phase"] == 3 * f["forward_per_step"]
        peak = r["device"]["peak_flops_per_device"]
        assert peak > 0 and r["device"]["peak_source"].startswith("measured")
        train_s = r["phases"]["train"]["seconds"]
        assert r["mfu"]["train"] == pytest.approx(f["train_phase"] / (train_s * peak * world))
        assert r["train"]["tokens_per_s_per_gpu"] == pytest.approx(
            r["train"]["tokens_per_step"] / train_s / world
        )
        assert set(r["peak_memory_gb"]) == {f"rank{i}" for i in range(world)}
        assert all(0 < v < 64 for v in r["peak_memory_gb"].values())
        # a random model's responses end at the stop tokens: about vocab / 4 of them
        assert r["rollout"]["stop_token_ids"] == round(r["model"]["vocab"] / 4)
        assert 1 <= r["rollout"]["response_length_mean"] <= 16
    for r in (padded, packed):
        assert 0 <= r["train"]["padding_fraction"] < 1 and r["train"]["micro_batches_per_optimizer_step"] >= 1
    assert packed["layout"]["pack_sequences"] and not padded["layout"]["pack_sequences"]
    capsys.readouterr()
    assert (
        cli(["bench", "step", "--compare", str(tmp_path / "padded.json"), str(tmp_path / "packed.json")]) == 0
    )
    table = capsys.readouterr().out
    assert "padded" in table.splitlines()[0] and "packed" in table.splitlines()[0]
    assert "| train.padding_fraction |" in table and "| per_step" not in table


def test_bench_step_names_the_missing_model_dimensions(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"hf_path": str(tmp_path / "nowhere")}}))
    assert cli(["bench", "step", str(cfg)]) == 2
    assert "--size 3b|7b|32b|72b or --hf-config" in capsys.readouterr().err
