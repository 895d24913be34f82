"""`mmr1-mega bench step`: GRPO steps of any config at its model's real dimensions, timed per phase.

What runs is the trainer itself (`mmr1-mega train`: the megatron actor in the config's layout, its rollout
engine, rewards, VAS, weight sync) for --warmup + --steps steps, on the synthetic visual-counting prompts,
with a model of random weights built offline (no model hub): the demo YAML's tiny model, a released
Qwen2.5-VL size's dimensions (--size, with --layers / --vision-depth to cut the stacks), an HF config.json
(--hf-config) or the config's own model.hf_path. Printed (and written to --out) as JSON, from the steps
after warm-up (medians over steps):

- per phase (VAS sampling with its refreshes, rollout = generation + rewards, old/ref log-probs, train, weight
  sync): seconds and share of the step;
- rollout tokens/s (generated response tokens over generation time), train tokens/s per GPU;
- model FLOPs (mmr1_mega.perf.flops: the LM and the vision tower, matmuls + attention, written out there)
  and MFU per actor phase against the device's peak (mmr1_mega.perf.peak: datasheet peaks of H100 / H200 /
  B200, or on CPU the matmul peak measured on this machine with the ranks' threads);
- peak memory per rank, the padding fraction of the train passes, response lengths.

A random-weights model samples nearly uniform tokens, so its responses would all run to max_new_tokens.
Real RL responses vary in length, which is what packing and token budgets are for: the bench makes about
V / --mean-response-tokens of the V token ids stop tokens (rollout.stop_token_ids, which every engine
takes), so responses end at roughly geometric lengths; the lengths it got are in the JSON.

`--compare A.json B.json` prints two results side by side.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIZES = ("3b", "7b", "32b", "72b")
PHASES = ("sample", "rollout", "logprob", "train", "sync")  # the trainer's time/* (grpo._perf), in order
ROLLOUT_PARTS = ("generate", "reward")  # inside time/rollout
DEMO_VOCAB = 320


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmr1-mega bench step", description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="a training YAML (examples/*.yaml) or the demo YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the training config")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--size", choices=SIZES, help="the model at this released Qwen2.5-VL size's dimensions")
    p.add_argument("--hf-config", help="an HF config.json to build the model from")
    p.add_argument("--layers", type=int, help="decoder layers (default: the model's)")
    p.add_argument("--vision-depth", type=int, help="vision blocks (default: the model's)")
    p.add_argument(
        "--mean-response-tokens",
        type=float,
        default=None,
        help="target mean response length (default: rollout.max_new_tokens / 4; 0: eos only)",
    )
    p.add_argument(
        "--peak-tflops", type=float, help="peak dense TFLOP/s per device (default: table / measured)"
    )
    p.add_argument("--work", help="folder for the model, data and run (default: a temporary one)")
    p.add_argument("--out", help="write the JSON result here too")
    p.add_argument("--compare", nargs=2, metavar=("A_JSON", "B_JSON"), help="print two results side by side")
    args = p.parse_intermixed_args(argv)

    if args.compare:
        from mmr1_mega.perf.compare import compare_table

        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        print(
            compare_table(
                _comparable(a), _comparable(b), Path(args.compare[0]).stem, Path(args.compare[1]).stem
            )
        )
        return 0
    if not args.config:
        p.error("give a config (or --compare A.json B.json)")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    try:
        result = run_bench(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"mmr1-mega bench step: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


def _comparable(result: dict) -> dict:
    """What --compare shows: everything but the per-step records."""
    return {k: v for k, v in result.items() if k != "per_step"}


def run_bench(args) -> dict:
    import yaml

    from mmr1_mega.config import load_config
    from mmr1_mega.distributed.cpu import disable_dynamo_without_cuda
    from mmr1_mega.trainer.demo import synthetic_config

    disable_dynamo_without_cuda()
    raw = yaml.safe_load(Path(args.config).read_text()) or {}
    demo = "grpo" in raw  # the demo YAML: the training config is its grpo section, beside model + task
    work = Path(args.work or tempfile.mkdtemp(prefix="mmr1-bench-step-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    train_yaml = work / "train.yaml"
    train_yaml.write_text(yaml.safe_dump(raw["grpo"] if demo else raw))
    cfg = load_config(train_yaml, args.overrides)  # the user's config as given: errors before any work

    # the task and its processor (the synthetic counting task: real images, real prompt template)
    from mmr1_mega.data.prompts import DEFAULT_SYSTEM_PROMPT
    from mmr1_mega.data.synthetic import generate, synthetic_corpus
    from mmr1_mega.data.tokenizer import build_processor

    prompts_needed = max(cfg.train.prompts_per_step * (args.warmup + args.steps), 64)
    task = dict(raw["synthetic"]) if demo else {"min_pixels": 3136, "max_pixels": 7056}
    task.update(num_train=max(prompts_needed, 64), num_val=0, num_sft=0, teacher_error=0.0)
    task.pop("teacher_error_levels", None)
    syn = synthetic_config({"synthetic": task}, seed=0)
    print(f"[bench] task, processor and random-weights model in {work}", file=sys.stderr, flush=True)
    paths = generate(str(work / "data"), syn)
    model_dir = work / "model"
    processor = build_processor(
        str(model_dir),
        min_pixels=task["min_pixels"],
        max_pixels=task["max_pixels"],
        corpus=synthetic_corpus() + [DEFAULT_SYSTEM_PROMPT],
        vocab_size=task.get("vocab_size", DEMO_VOCAB),
    )
    hf_cfg, source = _model_config(args, raw if demo else None, cfg, processor.tokenizer)
    cfg.check_against_model(hf_cfg)  # the layout fits the model's heads, layers, vocab: before any weights
    from mmr1_mega.trainer.demo import save_random_model

    save_random_model(model_dir, processor.tokenizer, hf_cfg, seed=0)

    # response lengths: stop tokens drawn among the ids a random model samples
    text = hf_cfg.text_config
    mean = cfg.rollout.max_new_tokens / 4 if args.mean_response_tokens is None else args.mean_response_tokens
    stop_ids = _stop_token_ids(text.vocab_size, mean, hf_cfg) if mean > 0 else []

    steps = args.warmup + args.steps
    run_dir = work / "run"
    overrides = [
        f"model.hf_path={model_dir}",
        f"data.train_files=[{paths['train']}]",
        "data.val_files=[]",
        f"data.min_pixels={task['min_pixels']}",
        f"data.max_pixels={task['max_pixels']}",
        *args.overrides,
        f"rollout.stop_token_ids={json.dumps(stop_ids)}",
        f"train.steps={steps}",
        "train.val_every_steps=0",
        f"train.output_dir={run_dir}",
        "checkpoint.save_every_steps=0",
        "checkpoint.resume=",
        "log.wandb='off'",
        "log.tensorboard=false",
    ]
    cfg = load_config(train_yaml, overrides)
    from mmr1_mega.trainer.main import train_main

    t0 = time.perf_counter()
    rc = train_main([str(train_yaml), *overrides])
    wall = time.perf_counter() - t0
    if rc:
        raise ValueError(f"the training run failed (exit {rc}); its output is above, its folder {run_dir}")
    from mmr1_mega.trainer.logger import read_metrics

    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("step", 0) >= 1]
    timed = [r for r in records if r["step"] > args.warmup]
    if not timed:
        raise ValueError(f"no step after warm-up was logged in {run_dir / 'metrics.jsonl'}")
    return summarize(timed, cfg, hf_cfg, source, args, wall, stop_ids, mean)


def _model_config(args, demo_raw: dict | None, cfg, tokenizer):
    """The transformers config of the model to build, and a word on where its dimensions came from."""
    if args.size:
        from mmr1_mega.models.presets import qwen2_5_vl_config

        hf_cfg = qwen2_5_vl_config(args.size, num_layers=args.layers, vision_depth=args.vision_depth)
        return hf_cfg, f"Qwen2.5-VL-{args.size.upper()} dimensions (models/presets.py)"
    if args.hf_config or demo_raw is None:
        path = Path(args.hf_config) if args.hf_config else Path(cfg.model.hf_path) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no model dimensions: {path} does not exist here; name them with --size "
                f"{'|'.join(SIZES)} or --hf-config PATH/config.json"
            )
        from transformers import AutoConfig

        hf_cfg = AutoConfig.from_pretrained(str(path.parent))
        if args.layers:
            hf_cfg.text_config.num_hidden_layers = args.layers
        if args.vision_depth:
            hf_cfg.vision_config.depth = args.vision_depth
        return hf_cfg, f"the dimensions of {path}"
    from mmr1_mega.trainer.demo import tiny_model_config

    m = dict(demo_raw["model"])
    if args.layers:
        m["num_layers"] = args.layers
    if args.vision_depth:
        m["vision_depth"] = args.vision_depth
    return tiny_model_config(tokenizer, m), "the demo YAML's model section"


def _stop_token_ids(vocab: int, mean: float, hf_cfg) -> list[int]:
    """About vocab / mean token ids (none of the model's special ones), chosen with a fixed seed."""
    special = {
        getattr(hf_cfg, k, None)
        for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    }
    candidates = [i for i in range(vocab) if i not in special]
    k = min(len(candidates), max(1, round(vocab / mean)))
    return sorted(random.Random(0).sample(candidates, k))


def summarize(timed: list[dict], cfg, hf_cfg, source: str, args, wall: float, stop_ids, mean) -> dict:
    """The JSON result from the timed steps' metrics."""
    from mmr1_mega.perf.flops import lm_params_matmul, mfu

    def med(key: str) -> float | None:
        values = [float(r[key]) for r in timed if r.get(key) is not None]
        return statistics.median(values) if values else None

    world = cfg.train.world_size or cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel
    tp, pp = cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel
    step_s = med("perf/step_seconds")
    phases = {}
    for name in PHASES + ROLLOUT_PARTS:
        s = med(f"time/{name}")
        if s is not None:
            phases[name] = {"seconds": s, "share": s / step_s if step_s else None}
    if med("vas/last_refresh_s") is not None:
        phases["sample"]["vas_refresh_seconds_last"] = med("vas/last_refresh_s")

    # model FLOPs per step (the step batch's forward, mmr1_mega.perf.flops) and per actor phase
    fwd = med("perf/forward_flops") or 0.0
    logprob_passes = (
        1 + (cfg.loss.kl_coef > 0) + (cfg.log.engine_mismatch and (cfg.rollout.temperature or 1) != 1)
    )
    train_passes = cfg.train.ppo_epochs  # every mini-batch once per epoch: the batch, forward + backward
    flops = {
        "forward_per_step": fwd,
        "logprob_phase": logprob_passes * fwd,
        "train_phase": 3 * train_passes * fwd,
        "lm_matmul_params": lm_params_matmul(hf_cfg.text_config),
        "accounting": "mmr1_mega/perf/flops.py: 2 FLOPs per multiply-add of every matmul (LM and vision tower) "
        "+ causal attention pairs; a train pass = 3 forward passes",
    }
    peak, peak_source = _peak(args, cfg, world)
    mfu_out = {}
    if peak:
        for name, key, phase in (("logprob", "logprob_phase", "logprob"), ("train", "train_phase", "train")):
            if phases.get(phase, {}).get("seconds"):
                mfu_out[name] = mfu(flops[key], phases[phase]["seconds"], peak, world)
        if step_s:
            mfu_out["actor_over_step"] = mfu(
                flops["logprob_phase"] + flops["train_phase"], step_s, peak, world
            )
    tokens = med("perf/batch_tokens") or 0.0
    train_s = phases.get("train", {}).get("seconds")
    generate_s = phases.get("generate", {}).get("seconds")
    memory = {
        k.split("/")[-1]: max(float(r[k]) for r in timed if k in r)
        for k in sorted({k for r in timed for k in r if k.startswith("perf/peak_memory_gb/")})
    }
    return {
        "tool": "mmr1-mega bench step",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": str(args.config),
        "overrides": list(args.overrides),
        "model": {
            "source": source,
            "layers": hf_cfg.text_config.num_hidden_layers,
            "hidden": hf_cfg.text_config.hidden_size,
            "vocab": hf_cfg.text_config.vocab_size,
            "vision_depth": hf_cfg.vision_config.depth,
            "dtype": cfg.model.dtype,
            "weights": "random (built offline)",
        },
        "layout": {
            "world_size": world,
            "tensor_parallel": tp,
            "pipeline_parallel": pp,
            "data_parallel": world // (tp * pp),
            "sequence_parallel": cfg.parallel.sequence_parallel,
            "rollout_engine": cfg.rollout.engine,
            "pack_sequences": cfg.train.pack_sequences,
            "max_tokens_per_micro_batch": cfg.train.max_tokens_per_micro_batch,
            "micro_batch_size": cfg.train.micro_batch_size,
            "samples_per_step": cfg.train.prompts_per_step * cfg.rollout.n_samples,
        },
        "implementation": {k[5:]: timed[-1][k] for k in timed[-1] if k.startswith("impl/")},
        "steps": {"timed": len(timed), "warmup": args.warmup, "wall_seconds_with_setup": wall},
        "step_seconds": step_s,
        "phases": phases,
        "rollout": {
            "tokens_per_s": (med("rollout/response_tokens") or 0.0) / generate_s if generate_s else None,
            "response_tokens_per_step": med("rollout/response_tokens"),
            "response_length_mean": med("response/length_mean"),
            "response_length_max": med("response/length_max"),
            "truncated_frac": med("response/truncated_frac"),
            "stop_token_ids": len(stop_ids),
            "target_mean_response_tokens": mean,
        },
        "train": {
            "tokens_per_step": tokens,
            "tokens_per_s_per_gpu": tokens * train_passes / train_s / world if train_s else None,
            "padding_fraction": med("actor/padding_fraction"),
            "micro_batches_per_optimizer_step": med("actor/micro_batches"),
        },
        "flops": flops,
        "device": {"peak_flops_per_device": peak, "peak_source": peak_source},
        "mfu": mfu_out,
        "peak_memory_gb": memory,
        "per_step": [
            {
                k: v
                for k, v in r.items()
                if k.split("/")[0] in ("time", "perf", "actor", "rollout", "response")
            }
            for r in timed
        ],
    }


def _peak(args, cfg, world: int) -> tuple[float | None, str]:
    """Peak dense FLOP/s per device (per rank on CPU) and where the figure comes from."""
    from mmr1_mega.distributed.cpu import cuda_absent
    from mmr1_mega.perf.peak import device_peak, measure_cpu_matmul_peak

    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    if not cuda_absent():
        return device_peak(cfg.model.dtype)
    import torch

    # each forked rank runs torch with one thread (distributed/launch.py): the peak of one rank is one core's
    threads = 1
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.model.dtype]
    peak = measure_cpu_matmul_peak(threads, dtype=dtype)
    return peak, f"measured: {cfg.model.dtype} matmul on this CPU with {threads} thread(s) (one rank's share)"


if __name__ == "__main__":
    sys.exit(main())
