"""`mmr1-mega train` and `mmr1-mega sft`: load + check the config, then run on the ranks.

    mmr1-mega train examples/qwen2_5_vl_7b.yaml train.steps=200 vas.mixture_ratio=1.0
    torchrun --nproc-per-node 8 -m mmr1_mega.cli train examples/qwen2_5_vl_7b.yaml

Started without torchrun, it forks train.world_size local ranks (default TP x PP; gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys

from mmr1_mega.config import ConfigError, load_config

USER_ERRORS = ("DataError", "ConfigError", "CheckpointError", "WeightMappingError", "UnknownModelType")


def _parse(argv, prog: str):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="YAML config (defaults apply to what it leaves out)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. vas.mixture_ratio=0.8")
    args = parser.parse_args(argv)
    if args.config and "=" in args.config:  # no YAML file, only overrides
        args.overrides.insert(0, args.config)
        args.config = None
    return args


def _train_rank(cfg):
    from mmr1_mega.trainer.grpo import train_grpo

    return train_grpo(cfg)


def _sft_rank(cfg):
    from mmr1_mega.trainer.sft import train_sft

    return train_sft(cfg)


def _launch(fn, argv, prog: str) -> int:
    from mmr1_mega.distributed.cpu import disable_dynamo_without_cuda

    disable_dynamo_without_cuda()
    from mmr1_mega.data.errors import DataError
    from mmr1_mega.distributed.launch import RankFailed, run_on_ranks
    from mmr1_mega.distributed.signals import Preempted
    from mmr1_mega.models.hf_io import CheckpointError
    from mmr1_mega.trainer.setup import check_inputs

    args = _parse(argv, prog)
    try:
        cfg = load_config(args.config, args.overrides)
        check_inputs(cfg)
    except (ConfigError, CheckpointError, DataError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    world = cfg.train.world_size or cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel
    if world % cfg.train.nodes:
        print(f"{prog}: error: train.nodes={cfg.train.nodes} does not divide {world} ranks", file=sys.stderr)
        return 2
    try:
        results = run_on_ranks(fn, world, cfg, timeout_s=7 * 24 * 3600, nodes=cfg.train.nodes)
    except Preempted as e:  # under torchrun the rank runs in this process
        print(f"{prog}: {e}", file=sys.stderr)
        return 143
    except RankFailed as e:
        last = str(e).strip().splitlines()[-1]
        if last.startswith("mmr1_mega.distributed.signals.Preempted"):  # checkpointed, then stopped
            print(f"{prog}: {last.split(': ', 1)[-1]}", file=sys.stderr)
            return 143
        if last.split(":")[0].split(".")[-1] in USER_ERRORS:  # bad input found by a rank: one line
            print(f"{prog}: error: {last.split(': ', 1)[-1]}", file=sys.stderr)
            return 2
        print(f"{prog}: a rank failed:\n{e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in (results[0] or {}).items() if isinstance(v, (int, float))}, indent=1))
    return 0


def train_main(argv=None) -> int:
    return _launch(_train_rank, argv, "mmr1-mega train")


def sft_main(argv=None) -> int:
    return _launch(_sft_rank, argv, "mmr1-mega sft")
