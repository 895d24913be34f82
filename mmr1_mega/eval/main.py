"""`mmr1-mega eval`: score a model on a benchmark file in the MMR1-RL schema with the training verifier.

    mmr1-mega eval --model outputs/demo/sft_hf --data outputs/demo/data/val.jsonl
    mmr1-mega eval --checkpoint outputs/demo/grpo/checkpoints/step_000030 --base outputs/demo/sft_hf --data val.jsonl

A trainer checkpoint (megatron distributed, any layout) is first exported to an HF directory next to the
results. Generation uses the local engine (greedy unless --temperature); results per sample go to JSONL.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _export_checkpoint(ckpt: str, base: str, out: str) -> None:
    from transformers import AutoConfig

    from mmr1_mega.actor.actor import MegatronActor
    from mmr1_mega.actor.state import load_actor_state
    from mmr1_mega.distributed.init import initialize_model_parallel
    from mmr1_mega.models.weights import export_hf

    initialize_model_parallel(1, 1)
    hf_config = AutoConfig.from_pretrained(base)
    actor = MegatronActor(hf_config, base, dtype="fp32", train=False)
    load_actor_state(actor, Path(ckpt) / "actor", load_optimizer=False)
    export_hf(actor.model, actor.table, out, base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmr1-mega eval", description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF directory (weights, config, processor)")
    src.add_argument("--checkpoint", help="a trainer checkpoint directory (step_NNNNNN)")
    parser.add_argument("--base", help="with --checkpoint: the HF directory the run started from")
    parser.add_argument("--data", required=True, nargs="+", help="benchmark files (MMR1-RL schema)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--n", type=int, default=1, help="samples per problem (accuracy is their mean)")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--max-problems", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSONL of per-sample results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from mmr1_mega.distributed.cpu import disable_dynamo_without_cuda

    disable_dynamo_without_cuda()

    from mmr1_mega.config import RolloutConfig
    from mmr1_mega.data.config import DataConfig
    from mmr1_mega.data.errors import DataError
    from mmr1_mega.data.rl_dataset import RLDataset
    from mmr1_mega.data.tokenizer import load_processor
    from mmr1_mega.distributed.launch import run_on_ranks
    from mmr1_mega.models.hf_io import CheckpointError, HFCheckpoint
    from mmr1_mega.reward.config import RewardConfig
    from mmr1_mega.rollout.local import LocalEngine
    from mmr1_mega.trainer.rollout import generate_and_score

    t0 = time.time()
    try:
        model = args.model
        if args.checkpoint:
            if not args.base:
                raise CheckpointError("--checkpoint needs --base: the HF directory the run started from")
            HFCheckpoint(args.base)
            model = tempfile.mkdtemp(prefix="mmr1-eval-")
            run_on_ranks(_export_checkpoint, 1, args.checkpoint, args.base, model)
        HFCheckpoint(model)
        data_cfg = DataConfig()  # the paper's image bounds, as in training
        processor = load_processor(model, data_cfg.min_pixels, data_cfg.max_pixels)
        data = RLDataset(args.data, data_cfg, processor, name="eval")
    except (CheckpointError, DataError, FileNotFoundError) as e:
        print(f"mmr1-mega eval: error: {e}", file=sys.stderr)
        return 2
    engine = LocalEngine(model)
    count = len(data) if not args.max_problems else min(args.max_problems, len(data))
    rollout = RolloutConfig(
        n_samples=max(2, args.n), temperature=args.temperature, max_new_tokens=args.max_new_tokens
    )
    r = generate_and_score(
        engine, data, range(count), args.n, rollout, RewardConfig(), args.seed, args.temperature
    )
    n = max(1, len(r.accuracy))
    result = {
        "model": str(args.checkpoint or args.model),
        "problems": count,
        "samples": len(r.accuracy),
        "accuracy": sum(r.accuracy) / n,
        "format": sum(r.format) / n,
        "reward": sum(r.rewards) / n,
        "skipped_records": data.report.skipped,
        "seconds": round(time.time() - t0, 1),
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for k, text in enumerate(r.texts):
                rec = data[r.prompt_indices[k // args.n]]
                f.write(
                    json.dumps(
                        {
                            "id": rec["id"],
                            "answer": rec["answer"],
                            "response": text,
                            "accuracy": r.accuracy[k],
                            "format": r.format[k],
                        }
                    )
                    + "\n"
                )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
