"""A run stopped by SLURM's SIGTERM checkpoints at the next step boundary, exits 143 and leaves no engine
server behind; a run killed outright (SIGKILL) takes its servers with it. The engine servers here are
stand-in processes (tests/rollout/fake_sglang_server.py: SGLang needs a GPU) started by the real factory
through rollout.server_launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mmr1_mega.trainer.checkpoint import complete_checkpoints
from tests.rollout.test_rollout_sglang_engine import FAKE
from tests.trainer.tiny_task import grpo_config, write_config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split()[2] != "Z"


def _start_run(task, tmp_path, steps: int):
    root, model_dir, paths = task
    servers = tmp_path / "servers"
    servers.mkdir()
    out = tmp_path / "run"
    cfg = grpo_config(
        out,
        model_dir,
        paths,
        train={"steps": steps, "val_every_steps": 0},
        checkpoint={"save_every_steps": 0},
        rollout={
            "engine": "sglang",
            "num_engines": 2,
            "server_launcher": [sys.executable, FAKE, "--record-dir", str(servers)],
            "server_timeout_s": 120,
        },
    )
    path = write_config(tmp_path / "run.yaml", cfg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmr1_mega.cli", "train", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # wait until step 1 is logged
        f = out / "metrics.jsonl"
        if f.is_file() and any(json.loads(x)["step"] >= 1 for x in f.read_text().splitlines() if x):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    pids = [json.loads(f.read_text().splitlines()[0])["pid"] for f in servers.glob("*.jsonl")]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    return proc, out, pids


def test_sigterm_checkpoints_at_the_step_boundary_and_stops_every_server(task, tmp_path):
    proc, out, pids = _start_run(task, tmp_path, steps=50)
    os.kill(proc.pid, signal.SIGTERM)  # as SLURM does at the time limit (the launcher forwards it)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err.decode()[-3000:]
    assert "checkpoint.resume=auto" in err.decode()
    [ckpt] = complete_checkpoints(out)
    assert 1 <= int(ckpt.name.split("_")[1]) < 50
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "an engine server outlived the run"
    # colocated on CPU: nothing to hand over, so the engine is never told to release its memory (SGLang's CPU
    # server dies on /release_memory_occupation: it synchronises CUDA); each step's weights arrive after that
    # step's generation. (On GPUs the release / resume calls are checked in tests/rollout.)
    for f in (tmp_path / "servers").glob("*.jsonl"):
        paths = [json.loads(x)["path"] for x in f.read_text().splitlines()]
        assert not [p for p in paths if p in HANDOFF[:2]], paths
        first_update = paths.index("/update_weights_from_tensor")
        assert "/generate" in paths[first_update:], "no generation after the first weight update"


HANDOFF = ("/release_memory_occupation", "/resume_memory_occupation", "/update_weights_from_tensor")


def test_sigkill_of_the_whole_run_takes_the_servers_with_it(task, tmp_path):
    proc, _, pids = _start_run(task, tmp_path, steps=50)
    os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: the kernel's parent-death signal must act
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "an engine server outlived a killed run"


pytestmark = pytest.mark.slow
