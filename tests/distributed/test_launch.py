"""The fork launcher: results in rank order, tracebacks of failing ranks, and ranks that die silently."""

import os
import time

import pytest

from mmr1_mega.distributed.launch import RankFailed, run_on_ranks


def _rank_value(scale):
    return int(os.environ["RANK"]) * scale


def _raise_on_rank_1():
    if os.environ["RANK"] == "1":
        raise ValueError("bad input on rank 1")
    time.sleep(120)  # the other rank would wait for it in a collective


def _die_silently_on_rank_1():
    if os.environ["RANK"] == "1":
        os._exit(3)  # no traceback, no report: as the OOM killer or a crash in a native thread
    time.sleep(120)


def test_results_come_back_in_rank_order():
    assert run_on_ranks(_rank_value, 3, 10) == [0, 10, 20]


def test_a_failing_rank_is_reported_with_its_traceback_and_the_others_are_stopped():
    t0 = time.monotonic()
    with pytest.raises(RankFailed, match="rank 1 failed(.|\n)*bad input on rank 1"):
        run_on_ranks(_raise_on_rank_1, 2)
    assert time.monotonic() - t0 < 30


def test_a_rank_that_dies_without_reporting_fails_fast_instead_of_hanging():
    t0 = time.monotonic()
    with pytest.raises(RankFailed, match="rank 1 failed(.|\n)*exit code 3 without reporting"):
        run_on_ranks(_die_silently_on_rank_1, 2, timeout_s=600)
    assert time.monotonic() - t0 < 30


def test_a_parent_with_cuda_initialised_refuses_to_fork_ranks(monkeypatch):
    # stand-in for a parent that touched CUDA (no GPU here): CUDA cannot be used in forked children
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="inside the rank function"):
        run_on_ranks(_rank_value, 2, 1)


def test_importing_the_package_routes_cuda_questions_through_nvml():
    # torch answers is_available() / device_count() through NVML only with this variable; otherwise the
    # first question creates a CUDA context in the parent and every forked rank fails to use the GPU (seen
    # on an H200: `mmr1-mega demo`). It must be set by the import alone, before any entry point asks.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    code = "import os, mmr1_mega; print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
