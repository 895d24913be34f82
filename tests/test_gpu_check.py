"""scripts/gpu_check.sh is first executed here, in its dry mode, not on a lent device: the wheels it would
carry (pinned by the cp312 lock, under the device's 64 MiB), mmr1-mega imported from its own wheel, every
check run at toy sizes on the CPU, and the JSON report validated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_device_check_runs_dry_and_writes_a_complete_report(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = sorted(p.name.split("-")[0] for p in (ROOT / ".whl").glob("*.whl"))
    assert wheels == [
        "antlr4_python3_runtime",
        "latex2sympy2_extended",
        "math_verify",
        "megatron_core",
        "mmr1_mega",
        "transformers",
    ]
    assert any("cp312" in p.name for p in (ROOT / ".whl").glob("megatron_core-*.whl"))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True and set(report["checks"]) == {
        "logits",
        "grpo_demo",
        "loss_op",
        "sync",
        "op_equal",
        "ipc",
        "bench_step",
    }
    assert report["checks"]["grpo_demo"]["grpo_loss_implementation"] == ["triton-interpreter"]
    cases = report["checks"]["logits"]["cases"]
    assert {"tiny-fp32", "tiny-qwen3-fp32"} <= set(cases)  # Qwen3-VL with a video among them
    assert all(c["off_device"] == [] for c in cases.values())


def test_an_unknown_check_is_refused():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--out", "/dev/null", "--only", "logits,gpu"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown checks ['gpu']" in proc.stderr
