"""`mmr1-mega eval`: score a model on a benchmark file in the MMR1-RL schema with the training verifier.

    mmr1-mega eval --model outputs/demo/sft_hf --data outputs/demo/data/val.jsonl
    mmr1-mega eval --checkpoint outputs/demo/grpo/checkpoints/step_000030 --base outputs/demo/sft_hf --data val.jsonl
    mmr1-mega eval --model Qwen2.5-VL-32B-dir --data mathvista.jsonl --engine sglang --engine-tp 4 --num-engines 2

A trainer checkpoint (megatron distributed, any layout) is first exported to an HF directory next to the
results, by --export-parallel TPxPP ranks (a large model does not fit one). Generation: the local engine
(transformers, one process), or --engine vllm / sglang: --num-engines servers of --engine-tp GPUs each,
started for the model (from --server-launcher's environment if given) and stopped at the end — any model
size the engines serve. Greedy unless --temperature; results per sample go to JSONL.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _export_checkpoint(ckpt: str, base: str, out: str, tp: int = 1, pp: int = 1, dtype: str = "fp32") -> None:
    from transformers import AutoConfig

    from mmr1_mega.actor.actor import MegatronActor
    from mmr1_mega.actor.state import load_actor_state
    from mmr1_mega.distributed.init import initialize_model_parallel
    from mmr1_mega.models.weights import export_hf

    initialize_model_parallel(tp, pp)
    hf_config = AutoConfig.from_pretrained(base)
    actor = MegatronActor(hf_config, base, dtype=dtype, train=False)
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
    parser.add_argument("--engine", choices=("local", "vllm", "sglang"), default="local")
    parser.add_argument("--engine-tp", type=int, default=1, help="GPUs per engine server")
    parser.add_argument("--num-engines", type=int, default=1, help="engine servers (GPUs 0, tp, 2 tp, ...)")
    parser.add_argument(
        "--server-launcher",
        default="",
        help="argv starting one server, e.g. '.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server'",
    )
    parser.add_argument(
        "--server-args", default="", help="more flags for every server, e.g. '--max-model-len 8192'"
    )
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16"), default=None, help="default: bf16 on GPUs, fp32 on CPU"
    )
    parser.add_argument("--export-parallel", default="1x1", help="TPxPP ranks exporting a --checkpoint")
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=None,
        help="image resize bounds (with --max-pixels); default: the paper's, as in training, for the local "
        "engine; the model folder's own for server engines, which resize images by that folder's config",
    )
    parser.add_argument("--max-pixels", type=int, default=None)
    args = parser.parse_args(argv)
    from mmr1_mega.distributed.cpu import disable_dynamo_without_cuda

    disable_dynamo_without_cuda()

    import shlex

    from mmr1_mega.config import RolloutConfig
    from mmr1_mega.data.config import DataConfig
    from mmr1_mega.data.errors import DataError
    from mmr1_mega.data.rl_dataset import RLDataset
    from mmr1_mega.data.tokenizer import load_processor
    from mmr1_mega.distributed.cpu import cuda_absent
    from mmr1_mega.distributed.launch import run_on_ranks
    from mmr1_mega.models.hf_io import CheckpointError, HFCheckpoint
    from mmr1_mega.reward.config import RewardConfig
    from mmr1_mega.rollout.local import LocalEngine
    from mmr1_mega.rollout.protocol import EngineError
    from mmr1_mega.trainer.rollout import generate_and_score

    device = "cpu" if cuda_absent() else "cuda"
    dtype = args.dtype or ("fp32" if device == "cpu" else "bf16")
    t0 = time.time()
    try:
        model = args.model
        if args.checkpoint:
            if not args.base:
                raise CheckpointError("--checkpoint needs --base: the HF directory the run started from")
            HFCheckpoint(args.base)
            model = tempfile.mkdtemp(prefix="mmr1-eval-")
            tp, pp = (int(x) for x in args.export_parallel.lower().split("x"))
            run_on_ranks(_export_checkpoint, tp * pp, args.checkpoint, args.base, model, tp, pp, dtype)
        HFCheckpoint(model)
        data_cfg = DataConfig()  # the paper's image bounds, as in training
        if args.engine == "local":
            bounds = (args.min_pixels or data_cfg.min_pixels, args.max_pixels or data_cfg.max_pixels)
        else:  # the servers resize by the model folder's processor config: the prompts must agree with it
            bounds = (args.min_pixels, args.max_pixels)
        processor = load_processor(model, *bounds)
        data = RLDataset(args.data, data_cfg, processor, name="eval")
    except (CheckpointError, DataError, FileNotFoundError) as e:
        print(f"mmr1-mega eval: error: {e}", file=sys.stderr)
        return 2
    count = len(data) if not args.max_problems else min(args.max_problems, len(data))
    rollout = RolloutConfig(
        n_samples=max(2, args.n),
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        engine=args.engine,
        engine_tensor_parallel=args.engine_tp,
        num_engines=args.num_engines,
        server_launcher=shlex.split(args.server_launcher),
        server_args=shlex.split(args.server_args),
    )
    try:
        rollout.validate()
        if args.engine == "local":
            engine = LocalEngine(model, device=device, dtype=dtype)
        else:
            from mmr1_mega.rollout.factory import make_engine

            engine = make_engine(rollout, model, device=device, dtype=dtype)
    except (EngineError, ValueError) as e:
        print(f"mmr1-mega eval: error: {e}", file=sys.stderr)
        return 2
    try:
        r = generate_and_score(
            engine, data, range(count), args.n, rollout, RewardConfig(), args.seed, args.temperature
        )
    finally:
        if hasattr(engine, "shutdown"):
            engine.shutdown()
    n = max(1, len(r.accuracy))
    result = {
        "model": str(args.checkpoint or args.model),
        "engine": args.engine,
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
