"""bf16 vs FP8 rollout engines on the same policy: how far FP8 generation moves from what the actor computes.
Prints JSON.

    python tools/compare_fp8_rollout.py --config RUN/config.yaml [--prompts 64] [--samples 4] \
        [--fp8-format modelopt] [--vllm-python .venv-vllm/bin/python] [--device cpu]

The policy is the run config's model.hf_path (e.g. the demo's SFT export: its grpo/config.yaml), the prompts
its data.val_files (as the trainer tokenizes them), the sampling its rollout section. Two vLLM servers serve it:
bf16 weights, and FP8 weights written by quant/fp8.py exactly as a run with rollout.weight_dtype=fp8 starts
its engines (modelopt: activation scales calibrated on data.train_files). Reported, per engine:
- greedy: validation accuracy by the run's reward, and agreement with the other engine (identical
  continuations; mean share of the shorter continuation before the first differing token);
- sampled (rollout.temperature, n = --samples): the train-inference mismatch the trainer logs
  (rollout/logp_mismatch_*: actor minus engine log-probs of the engine's own tokens), the actor being the
  fp32 transformers model of the same weights;
- between engines: mean |log p_bf16 - log p_fp8| on the greedy tokens both generated alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def actor_logprobs(model, dataset, rollouts) -> list[list[float]]:
    """The fp32 transformers model's log-probs of each rollout's response tokens (prompt + response, one
    forward per sample)."""
    out = []
    n = rollouts.n
    for k, response in enumerate(rollouts.response_ids):
        s = dataset[rollouts.prompt_indices[k // n]]
        ids = torch.tensor([list(s["input_ids"]) + list(response)])
        kw = {"input_ids": ids, "mm_token_type_ids": (ids == model.config.image_token_id).long()}
        if s.get("pixel_values") is not None:
            # a response may sample the placeholder id: only the prompt's count as image slots
            kw["mm_token_type_ids"][0, len(s["input_ids"]) :] = 0
            kw.update(pixel_values=s["pixel_values"].float(), image_grid_thw=s["image_grid_thw"])
        with torch.no_grad():
            logits = model(**kw).logits[0, len(s["input_ids"]) - 1 : -1].double()
        out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0].tolist())
    return out


def _mismatch(actor: list[list[float]], engine: list[list[float]]) -> dict:
    from mmr1_mega.algo.mismatch import combine_mismatch, mismatch_stats

    parts = []
    for a, e in zip(actor, engine):
        a, e = torch.tensor(a), torch.tensor(e)
        parts.append(mismatch_stats(e, a, torch.ones_like(a, dtype=torch.bool)))
    return combine_mismatch(parts)


def _agreement(a, b) -> dict:
    same, prefix, diffs = 0, [], []
    for x, y, lx, ly in zip(a.response_ids, b.response_ids, a.logprobs, b.logprobs):
        same += x == y
        k = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        prefix.append(k / max(1, min(len(x), len(y))))
        diffs += [abs(u - v) for u, v in zip(lx[:k], ly[:k])]
    return {
        "greedy_identical": same / len(a.response_ids),
        "greedy_shared_prefix": sum(prefix) / len(prefix),
        "logp_abs_diff_mean_on_shared_tokens": sum(diffs) / max(1, len(diffs)),
        "shared_tokens": len(diffs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a trainer config (e.g. RUN/config.yaml)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--fp8-format", choices=("modelopt", "block"), default="modelopt")
    parser.add_argument("--calib-prompts", type=int, default=64)
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoModelForImageTextToText

    from mmr1_mega.config import load_config
    from mmr1_mega.data.rl_dataset import RLDataset
    from mmr1_mega.data.tokenizer import load_processor
    from mmr1_mega.quant import fp8
    from mmr1_mega.rollout.factory import make_engine
    from mmr1_mega.trainer.rollout import generate_and_score

    cfg = load_config(args.config)
    processor = load_processor(cfg.model.hf_path, cfg.data.min_pixels, cfg.data.max_pixels)
    val = RLDataset(cfg.data.val_files, cfg.data, processor, name="val")
    indices = list(range(min(args.prompts, len(val))))
    start = time.time()
    work = Path(tempfile.mkdtemp(prefix="mmr1-fp8-compare-"))
    calib = RLDataset(cfg.data.train_files, cfg.data, processor, name="fp8 calibration")
    fp8.prepare_engine_checkpoint(
        cfg.model.hf_path, work / "fp8", args.fp8_format, calib, args.calib_prompts, device=args.device
    )
    actor = AutoModelForImageTextToText.from_pretrained(cfg.model.hf_path, dtype=torch.float32).eval()
    rollout = cfg.rollout
    rollout.engine, rollout.colocate = "vllm", True
    rollout.server_launcher = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server"]
    rollout.server_args = ["--max-model-len", str(cfg.data.max_prompt_len + rollout.max_new_tokens + 64)]
    report = {"model": cfg.model.hf_path, "prompts": len(indices), "samples": args.samples, "engines": {}}
    greedy = {}
    for name, path, weight_dtype in (("bf16", cfg.model.hf_path, "bf16"), ("fp8", work / "fp8", "fp8")):
        rollout.weight_dtype, rollout.fp8_format = weight_dtype, args.fp8_format
        engine = make_engine(rollout, path, device=args.device, dtype="bf16")
        try:
            g = generate_and_score(engine, val, indices, 1, rollout, cfg.reward, args.seed, temperature=0.0)
            s = generate_and_score(engine, val, indices, args.samples, rollout, cfg.reward, args.seed + 1)
        finally:
            engine.shutdown()
        greedy[name] = g
        report["engines"][name] = {
            "greedy_accuracy": sum(g.accuracy) / len(g.accuracy),
            "sampled_accuracy": sum(s.accuracy) / len(s.accuracy),
            "sampled_tokens": sum(len(r) for r in s.response_ids),
            **{
                k.replace("rollout/", "sampled_"): v
                for k, v in _mismatch(actor_logprobs(actor, val, s), s.logprobs).items()
            },
            **{
                k.replace("rollout/", "greedy_"): v
                for k, v in _mismatch(actor_logprobs(actor, val, g), g.logprobs).items()
            },
        }
    report["bf16_vs_fp8"] = _agreement(greedy["bf16"], greedy["fp8"])
    report["seconds"] = round(time.time() - start, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
