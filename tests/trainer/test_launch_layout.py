"""`mmr1-mega check` (the layout before launch) and slurm/train.sbatch around it.

The sbatch script runs here with STAND-INS for SLURM's `srun` / `scontrol` and torchrun (no SLURM on this
machine): srun runs its command in this process's environment after checking its own options (the
pyxis container flags included) and records them; torchrun records its arguments. The layout check itself
is the real command."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mmr1_mega.config import Config, ConfigError
from mmr1_mega.trainer.layout import plan_layout

ROOT = Path(__file__).resolve().parents[2]


def _cfg(**rollout) -> Config:
    cfg = Config()
    cfg.rollout.engine = "sglang"
    cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel = 4, 2
    for k, v in rollout.items():
        setattr(cfg.rollout, k, v)
    return cfg


def test_colocated_engines_fill_every_node_and_the_actor_every_gpu():
    plan = plan_layout(_cfg(engine_tensor_parallel=4, num_engines=2), nodes=2, gpus_per_node=8)
    assert plan["nproc_per_node"] == 8 and plan["world_size"] == 16 and plan["data_parallel"] == 2
    assert plan["placement"] == "per_node" and plan["engines"] == 4
    one = plan_layout(_cfg(engine_tensor_parallel=4, num_engines=2), nodes=1, gpus_per_node=8)
    assert one["placement"] == "rank0" and one["engines"] == 2


def test_disaggregated_engines_leave_the_actor_the_first_gpus():
    cfg = _cfg(colocate=False, engine_tensor_parallel=2, num_engines=1, engine_gpus=[6, 7])
    cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel = 2, 1
    plan = plan_layout(cfg, nodes=2, gpus_per_node=8)
    assert plan["nproc_per_node"] == 6 and plan["world_size"] == 12 and plan["engine_gpus_per_node"] == [6, 7]
    assert plan_layout(cfg, nodes=2, gpus_per_node=8, mode="sft")["nproc_per_node"] == 8  # SFT: all GPUs


@pytest.mark.parametrize(
    "rollout, nodes, gpus, match",
    [
        ({"engine_tensor_parallel": 4, "num_engines": 3}, 2, 8, "12 per node, but a node has 8"),
        (
            {"colocate": False, "engine_gpus": [2, 3], "num_engines": 1, "engine_tensor_parallel": 2},
            2,
            8,
            "ids 6..7",
        ),
        ({}, 1, 4, "not a multiple of tensor_parallel 4 x pipeline_parallel 2"),
        ({}, 4, 6, "must divide the 6 actor GPUs"),
    ],
)
def test_layouts_that_do_not_fit_are_refused_naming_the_numbers(rollout, nodes, gpus, match):
    with pytest.raises(ConfigError, match=match):
        plan_layout(_cfg(**rollout), nodes=nodes, gpus_per_node=gpus)


STANDIN_SRUN = """#!/bin/bash
# STAND-IN for SLURM's srun: checks and records its options, then runs the command here
while [ $# -gt 0 ]; do
  case "$1" in
    -N|-n) shift 2 ;;
    --kill-on-bad-exit=*|--container-image=*|--container-mounts=*|--container-workdir=*)
      echo "$1" >> "$LOG/srun_options"; shift ;;
    -*) echo "stand-in srun: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
exec "$@"
"""
STANDIN_SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] || { echo "stand-in scontrol: only 'show hostnames'" >&2; exit 2; }
echo node-a; echo node-b
"""
STANDIN_TORCHRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$LOG/torchrun_args"
"""


def _sbatch(tmp_path, config, *overrides, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (
        ("srun", STANDIN_SRUN),
        ("scontrol", STANDIN_SCONTROL),
        ("torchrun", STANDIN_TORCHRUN),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    base = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "LOG": str(tmp_path),
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "0",
    }
    return subprocess.run(
        ["bash", str(ROOT / "slurm" / "train.sbatch"), str(config), *overrides],
        cwd=ROOT,
        env=os.environ | base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_sbatch_script_starts_torchrun_with_the_planned_ranks_per_node(tmp_path):
    config = ROOT / "examples" / "qwen2_5_vl_7b.yaml"
    proc = _sbatch(
        tmp_path,
        config,
        "rollout.colocate=false",
        "rollout.num_engines=1",
        "rollout.engine_gpus=[6,7]",
        CONTAINER_IMAGE="nvcr.io/nvidia/pytorch:25.09-py3",
    )
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "torchrun_args").read_text().split("\n")
    assert args[args.index("--nproc-per-node") + 1] == "6" and args[args.index("--nnodes") + 1] == "2"
    assert args[args.index("-m") + 1 :][:3] == ["mmr1_mega.cli", "train", str(config)]
    assert "rollout.engine_gpus=[6,7]" in args
    options = (tmp_path / "srun_options").read_text()
    assert (
        "--container-image=nvcr.io/nvidia/pytorch:25.09-py3" in options and "--kill-on-bad-exit=1" in options
    )


def test_the_sbatch_script_stops_before_launch_on_a_layout_that_does_not_fit(tmp_path):
    proc = _sbatch(tmp_path, ROOT / "examples" / "qwen2_5_vl_32b.yaml", "rollout.num_engines=3")
    assert proc.returncode != 0
    assert "12 per node, but a node has 8" in proc.stderr
    assert not (tmp_path / "torchrun_args").exists()


def test_sft_mode_gives_the_actor_every_gpu(tmp_path):
    config = ROOT / "examples" / "qwen2_5_vl_7b.yaml"
    proc = _sbatch(
        tmp_path,
        config,
        "rollout.colocate=false",
        "rollout.engine_gpus=[6,7]",
        "rollout.num_engines=1",
        MODE="sft",
    )
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "torchrun_args").read_text().split("\n")
    assert args[args.index("--nproc-per-node") + 1] == "8" and "sft" in args
    json.loads(proc.stdout.split("plan: ", 1)[1])  # the plan is printed as JSON
