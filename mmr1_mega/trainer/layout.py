"""`mmr1-mega check CONFIG [overrides] --nodes N --gpus-per-node G`: does the run fit the allocation?

Run before launch (slurm/train.sbatch does): it rejects, naming the numbers, a layout whose actor and engines
do not fit the nodes' GPUs, and prints the plan (JSON) the launch script reads (`nproc_per_node`: the
ranks torchrun starts per node).

Where things go (rollout/factory.py, trainer/setup.py):
- the actor takes GPUs 0 .. nproc_per_node - 1 of every node; nproc_per_node is every GPU when engines are
  colocated (or the local engine runs in rank 0), else the GPUs rollout.engine_gpus leaves free;
- server engines: rollout.num_engines per node that runs engines — every node with placement per_node (auto
  on more than one node), rank 0's node otherwise — each on engine_tensor_parallel consecutive GPUs.
"""

from __future__ import annotations

import argparse
import json
import sys

from mmr1_mega.config import Config, ConfigError


def check_colocated_engines_fit(rollout, gpus: int) -> None:
    """Raise ConfigError when a node's colocated engines (rollout.num_engines of engine_tensor_parallel
    GPUs each) need more than the node's `gpus` actor GPUs."""
    need = rollout.num_engines * rollout.engine_tensor_parallel
    if need > gpus:
        raise ConfigError(
            f"{rollout.num_engines} colocated engines x {rollout.engine_tensor_parallel} GPUs = {need} per "
            f"node, but a node has {gpus} GPUs: lower rollout.num_engines or engine_tensor_parallel"
        )


def plan_layout(cfg: Config, nodes: int, gpus_per_node: int, mode: str = "train") -> dict:
    """The run's layout on nodes x gpus_per_node GPUs (mode "sft": no engines). Raises ConfigError naming
    what does not fit."""
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(f"--nodes {nodes} and --gpus-per-node {gpus_per_node} must be >= 1")
    r, p = cfg.rollout, cfg.parallel
    server = r.engine != "local" and mode == "train"
    placement = r.placement if r.placement != "auto" else ("per_node" if server and nodes > 1 else "rank0")
    engine_gpus = sorted(r.engine_gpus) if server and not r.colocate else []
    nproc = gpus_per_node - len(engine_gpus)
    if engine_gpus and (engine_gpus[0] < nproc or engine_gpus[-1] >= gpus_per_node):
        raise ConfigError(
            f"rollout.engine_gpus {engine_gpus}: the actor takes GPUs 0..{nproc - 1} of each node, so the engines "
            f"must use the last {len(engine_gpus)} of the {gpus_per_node} (ids {nproc}..{gpus_per_node - 1})"
        )
    if nproc < 1:
        raise ConfigError(
            f"rollout.engine_gpus takes all {gpus_per_node} GPUs of a node: none left for the actor"
        )
    world = nodes * nproc
    model_parallel = p.tensor_parallel * p.pipeline_parallel
    if world % model_parallel:
        raise ConfigError(
            f"{nodes} nodes x {nproc} actor GPUs = {world} ranks, not a multiple of tensor_parallel "
            f"{p.tensor_parallel} x pipeline_parallel {p.pipeline_parallel}"
        )
    if p.tensor_parallel > nproc or nproc % p.tensor_parallel:
        raise ConfigError(
            f"parallel.tensor_parallel={p.tensor_parallel} must divide the {nproc} actor GPUs of a node "
            "(tensor-parallel groups stay inside a node)"
        )
    engine_nodes = (nodes if placement == "per_node" else 1) if server else 0
    per_node_gpus = r.num_engines * r.engine_tensor_parallel if server else 0
    if server and r.colocate:
        check_colocated_engines_fit(r, nproc)
    dp = world // model_parallel
    rows = cfg.train.prompts_per_step * r.n_samples
    return {
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "nproc_per_node": nproc,
        "world_size": world,
        "data_parallel": dp,
        "rows_per_replica": rows / dp,
        "placement": placement if server else ("none" if mode == "sft" else "in-process (rank 0)"),
        "engines": r.num_engines * engine_nodes if server else int(mode == "train"),
        "engine_gpus_per_node": (list(range(per_node_gpus)) if r.colocate else engine_gpus) if server else [],
    }


def main(argv: list[str] | None = None) -> int:
    from mmr1_mega.config import load_config

    ap = argparse.ArgumentParser(prog="mmr1-mega check", description=__doc__.splitlines()[0])
    ap.add_argument("config", help="YAML config")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, as for train")
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--gpus-per-node", type=int, required=True)
    ap.add_argument("--mode", choices=("train", "sft"), default="train", help="sft: the actor alone")
    args = ap.parse_args(argv)
    try:
        plan = plan_layout(
            load_config(args.config, args.overrides), args.nodes, args.gpus_per_node, args.mode
        )
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"mmr1-mega check: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(plan, indent=1))
    return 0
