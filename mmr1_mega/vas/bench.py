"""Benchmark of VAS: vectorised self-BLEU-123 against the NLTK loop, and the sampler's draw time. Prints JSON.

Usage: python tools/bench_vps.py [--prompts 64] [--n 16] [--length 1024] [--nltk-prompts 4] ...
(also `mmr1-mega bench vps ...`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence

import numpy as np

from mmr1_mega.vas.sampler import MixedSampler
from mmr1_mega.vas.self_bleu import self_bleu


def synthetic_groups(
    prompts: int, n: int, length: int, vocab: int, mutation: float, jitter: float, seed: int
) -> list[list[list[int]]]:
    """Responses sharing structure like real rollouts: per prompt a Zipf-distributed base sequence, each
    response a copy with a share `mutation` of tokens replaced and its length cut by up to `jitter`."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(prompts):
        base = (rng.zipf(1.3, size=length) - 1) % vocab
        group = []
        for _ in range(n):
            resp = base.copy()
            mask = rng.random(length) < mutation
            resp[mask] = (rng.zipf(1.3, size=int(mask.sum())) - 1) % vocab
            keep = length - int(rng.integers(0, int(jitter * length) + 1))
            group.append(resp[:keep].tolist())
        groups.append(group)
    return groups


def nltk_self_bleu(group: Sequence[Sequence[int]]) -> list[float]:
    """The reference: NLTK sentence_bleu of each response against the others (MMR1's per-prompt loop)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method1
    return [
        sentence_bleu(
            list(group[:j]) + list(group[j + 1 :]),
            group[j],
            weights=(1 / 3, 1 / 3, 1 / 3),
            smoothing_function=smooth,
        )
        for j in range(len(group))
    ]


def bench_self_bleu(args: argparse.Namespace) -> dict:
    groups = synthetic_groups(
        args.prompts, args.n, args.length, args.vocab, args.mutation, args.jitter, args.seed
    )
    self_bleu(groups[:1])  # warm-up: first-call allocations are not part of the steady state
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours: list[np.ndarray] = []
        for s in range(0, len(groups), args.chunk_prompts):
            ours.extend(self_bleu(groups[s : s + args.chunk_prompts]))
        runs.append(time.perf_counter() - start)
    ours_s = float(np.median(runs))
    subset = groups[: args.nltk_prompts]
    start = time.perf_counter()
    ref = [nltk_self_bleu(g) for g in subset]
    nltk_s = time.perf_counter() - start
    diff = max((float(np.max(np.abs(np.asarray(r) - o))) for r, o in zip(ref, ours)), default=float("nan"))
    ours_pp = ours_s / len(groups)
    nltk_pp = nltk_s / max(1, len(subset))
    return {
        "prompts": len(groups),
        "n": args.n,
        "response_length": args.length,
        "vocab": args.vocab,
        "mutation": args.mutation,
        "chunk_prompts": args.chunk_prompts,
        "ours_s": ours_s,
        "ours_s_runs": runs,
        "ours_per_prompt_s": ours_pp,
        "nltk_prompts_timed": len(subset),
        "nltk_s": nltk_s,
        "nltk_per_prompt_s": nltk_pp,
        "nltk_s_extrapolated_to_all_prompts": nltk_pp * len(groups),
        "speedup": nltk_pp / ours_pp,
        "max_abs_diff": diff,
        "mean_self_bleu": float(np.mean(np.concatenate(ours))),
        "note": "ours_s is the median of `repeats` runs over all prompts (list-to-array packing included); "
        "NLTK is timed once on the first nltk_prompts prompts and compared per prompt; speedup = "
        "nltk_per_prompt_s / ours_per_prompt_s; max_abs_diff over the NLTK-timed prompts",
    }


def bench_sampler(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    sampler = MixedSampler(args.pool, 0.5, args.seed)
    start = time.perf_counter()
    sampler.set_weights(rng.random(args.pool))
    set_weights_ms = (time.perf_counter() - start) * 1e3
    # Start the measured draws just before the end of the shuffled pass so they include a wrap.
    sampler.cursor = max(0, args.pool - args.batch * 3)
    times = []
    for _ in range(args.draws):
        t0 = time.perf_counter()
        sampler.draw(args.batch)
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.array(times)
    return {
        "pool": args.pool,
        "batch": args.batch,
        "mixture_ratio": 0.5,
        "draws": args.draws,
        "draw_ms_median": float(np.median(t)),
        "draw_ms_p99": float(np.percentile(t, 99)),
        "draw_ms_max": float(t.max()),
        "set_weights_ms": set_weights_ms,
        "includes_wrap": bool(sampler.passes > 0),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print one JSON object.

    Takes:
        argv: command-line arguments (None: sys.argv).
    Returns:
        0.
    """
    ap = argparse.ArgumentParser(prog="bench_vps", description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64, help="prompts scored by our implementation")
    ap.add_argument("--n", type=int, default=16, help="responses per prompt")
    ap.add_argument("--length", type=int, default=1024, help="tokens per response")
    ap.add_argument(
        "--jitter", type=float, default=0.0, help="responses are cut by up to this share of length"
    )
    ap.add_argument("--vocab", type=int, default=151_936, help="token id range (Qwen2.5 vocabulary)")
    ap.add_argument("--mutation", type=float, default=0.3, help="share of tokens changed per response")
    ap.add_argument("--chunk-prompts", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of ours (median reported)")
    ap.add_argument("--nltk-prompts", type=int, default=4, help="prompts timed with the NLTK loop")
    ap.add_argument("--pool", type=int, default=1_000_000, help="sampler pool size")
    ap.add_argument("--batch", type=int, default=512, help="sampler batch size")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-sampler", action="store_true")
    args = ap.parse_args(argv)
    out = {"machine": platform.processor() or platform.machine(), "self_bleu": bench_self_bleu(args)}
    if not args.skip_sampler:
        out["sampler"] = bench_sampler(args)
    print(json.dumps(out, indent=2))
    return 0
