"""The CPU demo from the command line with rollout.engine=vllm and =sglang: the demo's model, task and
configuration, cut to a few SFT steps and 2 GRPO steps, through the trainer with a real engine server (started
by the trainer from the engine's own environment, fed by the weight sync every step). "vllm-fp8": the same
with FP8 rollout weights (rollout.weight_dtype=fp8, modelopt format: calibrated and written by the trainer,
quantized at every sync) and truncated importance sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from mmr1_mega.trainer.demo import DEMO_CONFIG
from tests.engines.conftest import ENGINES, ROOT, STANDIN, engine_python

pytestmark = [pytest.mark.engine, pytest.mark.slow]
LAUNCH = {"vllm": "vllm.entrypoints.openai.api_server", "sglang": "sglang.launch_server"}


@pytest.mark.parametrize("variant", [*ENGINES, "vllm-fp8"])
def test_demo_trains_two_grpo_steps_with_a_real_engine_from_the_cli(variant, tmp_path):
    kind = variant.removesuffix("-fp8")
    python = engine_python(kind)
    demo = yaml.safe_load(open(DEMO_CONFIG))
    demo["synthetic"].update(num_train=32, num_val=8, num_sft=64)
    demo["grpo"]["sft"].update(steps=10, batch_size=16)
    demo["grpo"]["train"].update(steps=2, prompts_per_step=4, val_every_steps=2, val_max_prompts=8)
    demo["grpo"]["checkpoint"] = {"save_every_steps": 2, "keep_last": 1}
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(demo))
    overrides = [
        f"rollout.engine={kind}",
        f"rollout.server_launcher=[{python}, -m, {LAUNCH[kind]}]",
        "rollout.server_timeout_s=300",
        "rollout.server_args="
        + ("[--max-model-len, '1024']" if kind == "vllm" else "[--max-total-tokens, '4096']"),
    ]
    if kind == "sglang":
        overrides.append(f"rollout.server_env={{PYTHONPATH: {STANDIN}}}")  # the sgl_kernel stand-in
    fp8 = variant.endswith("-fp8")
    if fp8:
        overrides += [
            "rollout.weight_dtype=fp8",
            "rollout.fp8_format=modelopt",
            "rollout.fp8_calib_prompts=8",
            "loss.tis_cap=2.0",
        ]
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "mmr1_mega.cli", "demo", "--out", str(out), "--config", str(cfg), *overrides],
        cwd=ROOT,
        env=os.environ | {"TMPDIR": str(tmp_path)},  # the engine's log lands here
        capture_output=True,
        text=True,
        timeout=900,
    )
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob(f"mmr1-{kind}-*.log"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:] + logs
    recs = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2]
    for r in recs[1:]:
        assert r["actor/update_skipped"] == 0.0 and r["sync/bytes"] > 0
        # logged every step (their agreement within fp32 rounding is test_sync_real_engines' business)
        assert 0 <= r["rollout/logp_mismatch_abs_mean"] <= r["rollout/logp_mismatch_abs_max"], r
        assert r["rollout/logp_mismatch_k3"] >= 0
        if fp8:  # an FP8 engine in bf16 samples from other probabilities than the fp32 actor computes
            assert r["rollout/logp_mismatch_abs_mean"] > 0 and 0 < r["actor/tis_weight_mean"]
    if fp8:
        served = out / "grpo" / "engine-fp8"
        assert json.loads((served / "config.json").read_text())["quantization_config"]["quant_algo"] == "FP8"
        assert "quantization=modelopt" in logs or any(
            "quantization=modelopt" in p.read_text(errors="replace") for p in tmp_path.glob("mmr1-vllm-*.log")
        )
    assert "val/accuracy" in recs[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert [s for s, _ in summary["val_curve"]] == [0, 2]
