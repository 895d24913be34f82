"""Benchmark of weight sync: seconds and GB/s per full update, for each transport this machine has.

Transports:
- local: a megatron actor at TP=--tp (gloo on CPU, NCCL on GPU) -> the in-process transformers engine
  on rank 0 (sync_weights, bucketed, TP all-gather included);
- sglang-colocated / sglang-distributed: the same actor -> an SGLang server (CUDA IPC buckets / NCCL
  broadcast); need CUDA and SGLang, otherwise reported as skipped with the reason.
The model is a random Qwen2.5-VL of the given size written to a temporary directory. Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile

import torch

TRANSPORTS = ("local", "sglang-colocated", "sglang-distributed")


def _worker(hf_dir: str, tp: int, bucket_mb: float, repeats: int, dtype: str, transport: str) -> list[dict]:
    from mmr1_mega.distributed.cpu import disable_dynamo_without_cuda

    disable_dynamo_without_cuda()
    from transformers import AutoConfig

    from mmr1_mega.distributed.init import free_port, initialize_model_parallel
    from mmr1_mega.models.build import build_model
    from mmr1_mega.models.weights import load_hf_weights
    from mmr1_mega.sync.sync import sync_weights

    hf_config = AutoConfig.from_pretrained(hf_dir)
    initialize_model_parallel(tp, 1)
    model, family = build_model(hf_config, dtype=dtype)
    table = family.weight_table(hf_config)
    load_hf_weights(model, hf_dir, table)
    rank0 = torch.distributed.get_rank() == 0
    engine = None
    if transport == "local" and rank0:
        from mmr1_mega.rollout.local import LocalEngine

        engine = LocalEngine(hf_dir, device="cuda" if torch.cuda.is_available() else "cpu", dtype=dtype)
    elif transport != "local" and rank0:
        from mmr1_mega.rollout.sglang import SGLangEngine
        from mmr1_mega.rollout.sglang_server import SGLangServer, default_log_path

        port = free_port()
        server = SGLangServer(
            hf_dir,
            port=port,
            mem_fraction=0.3,
            log_path=default_log_path(port),
            colocated=transport == "sglang-colocated",
            base_gpu_id=0 if transport == "sglang-colocated" else tp,
        )
        engine = SGLangEngine(
            [server], colocated=transport == "sglang-colocated", master_port=free_port()
        ).launch()
    try:
        runs = [sync_weights(model, table, engine, bucket_mb=bucket_mb) for _ in range(repeats + 1)][1:]
        # asked here, in the rank: CUDA must not be initialised in the parent that forks the ranks
        name = torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        return [m | {"device": name} for m in runs]
    finally:
        if engine is not None and hasattr(engine, "servers"):
            engine.shutdown()


def _skip_reason(transport: str, tp: int) -> str | None:
    if transport == "local":
        return None
    if not torch.cuda.is_available():
        return "needs CUDA (none on this machine)"
    if importlib.util.find_spec("sglang") is None:
        return "needs SGLang: pip install 'mmr1-mega[sglang]'"
    if transport == "sglang-distributed" and torch.cuda.device_count() < tp + 1:
        return f"needs {tp + 1} GPUs (actor TP={tp} + one engine GPU)"
    return None


def main(argv: list[str] | None = None) -> int:
    """CLI: `mmr1-mega bench sync [--tp 2 --hidden 512 ...]`. Prints one JSON object; returns 0."""
    ap = argparse.ArgumentParser(prog="mmr1-mega bench sync", description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--bucket-mb", type=float, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed updates (after one warm-up update)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--transports", default=",".join(TRANSPORTS))
    args = ap.parse_args(argv)

    from mmr1_mega.distributed.launch import run_on_ranks
    from mmr1_mega.models.tiny import save_tiny_model

    report = {
        "device": None,  # filled in by the ranks
        "torch_threads": torch.get_num_threads(),
        "tp": args.tp,
        "bucket_mb": args.bucket_mb,
        "dtype": args.dtype,
        "transports": {},
    }
    with tempfile.TemporaryDirectory() as d:
        model = save_tiny_model(
            d,
            seed=0,
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.heads,
            num_kv_heads=max(args.heads // 4, args.tp),
            vocab_size=args.vocab,
            intermediate_size=args.intermediate,
        )
        n = sum(p.numel() for p in model.parameters())
        report["model"] = {"parameters": n, "bytes_per_update": n * (4 if args.dtype == "fp32" else 2)}
        del model
        for transport in args.transports.split(","):
            reason = _skip_reason(transport, args.tp)
            if reason:
                report["transports"][transport] = {"skipped": reason}
                continue
            runs = run_on_ranks(
                _worker, args.tp, d, args.tp, args.bucket_mb, args.repeats, args.dtype, transport
            )[0]
            report["device"] = runs[0]["device"]
            report["transports"][transport] = {
                "updates": [
                    {"seconds": round(m["seconds"], 4), "gb_per_s": round(m["gb_per_s"], 3)} for m in runs
                ],
                "median_seconds": round(statistics.median(m["seconds"] for m in runs), 4),
                "median_gb_per_s": round(statistics.median(m["gb_per_s"] for m in runs), 3),
                "bytes": runs[0]["bytes"],
                "buckets": runs[0]["buckets"],
            }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
