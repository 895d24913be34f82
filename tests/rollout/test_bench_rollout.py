"""`mmr1-mega bench rollout` as a tool: JSON out, every engine asked for reported (figures or why skipped)."""

from __future__ import annotations

import json

from mmr1_mega.rollout.bench import main


def test_bench_rollout_reports_each_engine_as_json(capsys, tmp_path):
    missing = str(tmp_path / "no-such-python")
    argv = [
        "--engines",
        "local,vllm,vllm-fp8,sglang-fp8",
        "--prompts",
        "2",
        "--n",
        "2",
        "--max-new-tokens",
        "4",
    ]
    argv += ["--hidden", "64", "--heads", "2", "--layers", "1", "--device", "cpu", "--vllm-python", missing]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    local = out["engines"]["local"]
    assert local["samples"] == 4 and 4 <= local["generated_tokens"] <= 16
    assert local["tokens_per_second"] > 0 and local["mean_length"] == local["generated_tokens"] / 4
    assert "engine_env.sh vllm" in out["engines"]["vllm"]["skipped"]
    # the FP8 model was written (modelopt format on CPU, calibrated on the prompts) before the server failed
    assert out["fp8_format"] == "modelopt"
    assert "engine_env.sh vllm" in out["engines"]["vllm-fp8"]["skipped"]
    assert "no FP8 layer" in out["engines"]["sglang-fp8"]["skipped"]
