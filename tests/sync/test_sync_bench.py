"""The sync benchmark tool runs and reports every transport (measured or skipped with a reason)."""

from __future__ import annotations

import json

import pytest
import torch

from mmr1_mega.sync import bench

pytestmark = pytest.mark.distributed


def test_bench_prints_json_with_every_transport(capsys):
    argv = [
        "--tp",
        "1",
        "--hidden",
        "64",
        "--layers",
        "2",
        "--heads",
        "4",
        "--vocab",
        "256",
        "--intermediate",
        "128",
        "--repeats",
        "2",
        "--bucket-mb",
        "0.05",
    ]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    local = report["transports"]["local"]
    assert local["bytes"] == report["model"]["bytes_per_update"] and len(local["updates"]) == 2
    assert local["buckets"] > 1 and all(u["seconds"] > 0 and u["gb_per_s"] > 0 for u in local["updates"])
    for name in ("sglang-colocated", "sglang-distributed"):
        entry = report["transports"][name]
        assert ("skipped" in entry) == (not torch.cuda.is_available()) or "updates" in entry
