"""Benchmark of the GRPO loss: eager reference vs torch.compile vs the fused Triton op; prints JSON.

Usage: ``mmr1-mega bench loss [--num-prompts 512 --rollouts 8 --max-len 4096 --dtype bf16]`` (or
``python tools/bench_grpo_loss.py ...``). Defaults are small on CPU (where Triton runs in its interpreter,
so its time says nothing about a GPU) and the full size on CUDA.

Reported per implementation: median forward + backward time, achieved bandwidth as a fraction of the device
copy bandwidth measured in the same run, and peak memory above the inputs (CUDA only). Byte counts:

- ``bytes_min``: the unavoidable traffic of one pass: read logp, old_logp, ref_logp and the mask once,
  write d(loss)/d(logp) once;
- ``bytes_fused``: what the fused op's kernels move: the forward pass also writes an fp32 per-token
  gradient before aggregation weights, which the backward pass reads back and scales.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from mmr1_mega.algo.config import KL_ESTIMATORS, LOSS_AGG_MODES, GRPOLossConfig
from mmr1_mega.algo.loss import grpo_loss_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line (see ``--help``)."""
    p = argparse.ArgumentParser(prog="mmr1-mega bench loss", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-prompts", type=int, default=None, help="default: 512 on CUDA, 4 on CPU")
    p.add_argument("--rollouts", type=int, default=8, help="responses per prompt (group size)")
    p.add_argument(
        "--max-len", type=int, default=None, help="padded response length; 4096 on CUDA, 256 on CPU"
    )
    p.add_argument(
        "--fill", type=float, default=0.75, help="mean fraction of max-len that is response tokens"
    )
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="dtype of logp / old / ref")
    p.add_argument("--kl-coef", type=float, default=0.01)
    p.add_argument("--kl-estimator", default="low_var_kl", choices=KL_ESTIMATORS)
    p.add_argument("--loss-agg-mode", default="token-mean", choices=LOSS_AGG_MODES)
    p.add_argument("--dual-clip-c", type=float, default=None)
    p.add_argument(
        "--impl", nargs="+", default=["eager", "compile", "triton"], choices=["eager", "compile", "triton"]
    )
    p.add_argument(
        "--skip-compile", action="store_true", help="leave out torch.compile (slow to build on CPU)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed runs; default 3 (CUDA) / 1 (CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed runs; default 20 (CUDA) / 3 (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device; use --device cpu")
    gpu = args.device == "cuda"
    args.num_prompts = args.num_prompts or (512 if gpu else 4)
    args.max_len = args.max_len or (4096 if gpu else 256)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.iters = args.iters or (20 if gpu else 3)
    if args.skip_compile:
        args.impl = [i for i in args.impl if i != "compile"]
    if min(args.num_prompts, args.rollouts, args.max_len, args.iters) < 1 or not 0 < args.fill <= 1:
        p.error("sizes and --iters must be >= 1 and --fill in (0, 1]")
    return args


def make_inputs(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Random padded GRPO batch on the device, groups shuffled (members not contiguous)."""
    gen = torch.Generator().manual_seed(args.seed)
    n, length, dtype = args.num_prompts * args.rollouts, args.max_len, DTYPES[args.dtype]
    lengths = (torch.rand(n, generator=gen) * 2 * args.fill * length).clamp(1, length).long()
    mask = torch.arange(length)[None, :] < lengths[:, None]
    logp = -3.0 * torch.rand(n, length, generator=gen)
    old = logp + 0.2 * torch.randn(n, length, generator=gen)
    ref = logp + 0.2 * torch.randn(n, length, generator=gen)
    group_ids = torch.arange(args.num_prompts).repeat_interleave(args.rollouts)[
        torch.randperm(n, generator=gen)
    ]
    rewards = torch.randint(0, 2, (n,), generator=gen).float()
    dev = torch.device(args.device)
    return {
        "logp": logp.to(dev, dtype),
        "old_logp": old.to(dev, dtype),
        "ref_logp": ref.to(dev, dtype),
        "mask": mask.to(dev),
        "rewards": rewards.to(dev),
        "group_ids": group_ids.to(dev),
    }


def copy_bandwidth(device: torch.device, nbytes: int, iters: int) -> float:
    """Measured device copy bandwidth in bytes / s (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = _time(lambda: dst.copy_(src), device, warmup=2, iters=iters)
    return 2 * src.numel() * 4 / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - start)
    return out


def _step_fn(loss_fn: Callable, inputs: dict[str, torch.Tensor], cfg: GRPOLossConfig) -> Callable[[], None]:
    logp = inputs["logp"].detach().clone().requires_grad_()
    args = (
        inputs["old_logp"],
        inputs["ref_logp"],
        inputs["mask"],
        inputs["rewards"],
        inputs["group_ids"],
        cfg,
    )

    def step() -> None:
        logp.grad = None
        loss, _ = loss_fn(logp, *args)
        loss.backward()

    return step


def run(args: argparse.Namespace) -> dict:
    """Run every requested implementation and return the JSON-ready result."""
    device = torch.device(args.device)
    if device.type == "cpu" and "triton" in args.impl:
        # On CPU the Triton path can only run interpreted; the kernels pick this up at launch.
        os.environ["TRITON_INTERPRET"] = "1"
    from mmr1_mega.ops.grpo import grpo_loss, kernels, triton_usable

    cfg = GRPOLossConfig(
        kl_coef=args.kl_coef,
        kl_estimator=args.kl_estimator,
        loss_agg_mode=args.loss_agg_mode,
        dual_clip_c=args.dual_clip_c,
    ).validate()
    inputs = make_inputs(args)
    tokens = inputs["logp"].numel()
    elt = inputs["logp"].element_size()
    bytes_min = tokens * (3 * elt + 1 + elt)
    bytes_fused = tokens * (3 * elt + 1 + 4 + 4 + elt)
    copy_bytes = max(256 << 20, 2 * bytes_min) if device.type == "cuda" else 64 << 20
    bw = copy_bandwidth(device, copy_bytes, iters=max(args.iters, 5))

    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton_interpreted": device.type == "cpu" and "triton" in args.impl,
        "shape": {"num_prompts": args.num_prompts, "rollouts": args.rollouts, "max_len": args.max_len},
        "dtype": args.dtype,
        "valid_tokens": int(inputs["mask"].sum()),
        "padded_tokens": tokens,
        "config": {k: getattr(cfg, k) for k in ("kl_coef", "kl_estimator", "loss_agg_mode", "dual_clip_c")},
        "bytes_min": bytes_min,
        "bytes_fused": bytes_fused,
        "copy_bandwidth_gbs": bw / 1e9,
        "warmup": args.warmup,
        "iters": args.iters,
        "impls": {},
    }
    impls = {
        "eager": lambda: grpo_loss_reference,
        "compile": lambda: torch.compile(grpo_loss_reference),
        "triton": lambda: grpo_loss,
    }
    for name in args.impl:
        if name == "triton" and not triton_usable(device):
            result["impls"][name] = {"skipped": "Triton needs CUDA or TRITON_INTERPRET=1"}
            continue
        if name == "triton":
            kernels()
        step = _step_fn(impls[name](), inputs, cfg)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        times = _time(step, device, args.warmup, args.iters)
        med = statistics.median(times)
        entry = {
            "fwd_bwd_ms_median": med * 1e3,
            "fwd_bwd_ms_min": min(times) * 1e3,
            "min_bytes_bw_fraction": bytes_min / med / bw,
            "peak_mem_mb": (torch.cuda.max_memory_allocated(device) - base) / 2**20
            if device.type == "cuda"
            else None,
        }
        if name == "triton":
            entry["fused_bytes_bw_fraction"] = bytes_fused / med / bw
        result["impls"][name] = entry
    eager = result["impls"].get("eager", {}).get("fwd_bwd_ms_median")
    for entry in result["impls"].values():
        if eager and "fwd_bwd_ms_median" in entry:
            entry["speedup_vs_eager"] = eager / entry["fwd_bwd_ms_median"]
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mmr1-mega bench loss``: run the benchmark, print the JSON (and write ``--out``)."""
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
