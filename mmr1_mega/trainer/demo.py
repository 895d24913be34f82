"""`mmr1-mega demo`: the whole MMR1 pipeline on a CPU in minutes.

1. a synthetic visual-counting task drawn with PIL (data/synthetic.py) and a small tokenizer + processor
   built offline; 2. a tiny Qwen2.5-VL-architecture model initialised by transformers;
3. cold-start SFT on worked answers; 4. GRPO + VAS with the local rollout engine, validated every few
   steps; 5. curves and the VAS plot as PNGs.

Everything runs through the same code as a cluster run (megatron actor, fused GRPO op, weight sync).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mmr1_mega.models.presets import PATCH_SIZE

# shipped inside the package (examples/demo_cpu.yaml links to it), so an installed mmr1-mega runs the demo
DEMO_CONFIG = Path(__file__).resolve().with_name("demo_cpu.yaml")


def synthetic_config(cfg: dict, seed: int):
    """The SyntheticConfig of a demo YAML's `synthetic` section (validated). Raises ValueError on bad values."""
    from mmr1_mega.data.synthetic import SyntheticConfig

    s = dict(cfg["synthetic"])
    known = set(SyntheticConfig.__dataclass_fields__) | {"min_pixels", "max_pixels", "vocab_size"}
    unknown = sorted(set(s) - known)
    if unknown:
        raise ValueError(f"demo config: unknown synthetic keys {unknown}; known: {sorted(known)}")
    tuples = ("levels", "sft_levels", "teacher_error_levels", "target_colors")
    kwargs = {
        k: (tuple(v) if k in tuples and v else v)
        for k, v in s.items()
        if k in SyntheticConfig.__dataclass_fields__ and k not in ("seed", "extra")
    }
    syn = SyntheticConfig(seed=seed, **kwargs).validate()
    smallest, largest = syn.image_sides()
    lo, hi = s.get("min_pixels", 0), s.get("max_pixels", float("inf"))
    if smallest**2 < lo or largest**2 > hi:
        raise ValueError(
            f"demo config: the task's images are {smallest}-{largest} px wide but synthetic.min_pixels / "
            f"max_pixels are {lo} / {hi}; widen them to [{smallest**2}, {largest**2}]"
        )
    return syn


def build_assets(out: Path, cfg, seed: int) -> tuple[Path, dict]:
    """Write the task data, the processor and the initial tiny model; returns (model dir, data paths)."""
    from mmr1_mega.data.prompts import DEFAULT_SYSTEM_PROMPT
    from mmr1_mega.data.synthetic import generate, synthetic_corpus
    from mmr1_mega.data.tokenizer import build_processor

    s = cfg["synthetic"]
    paths = generate(str(out / "data"), synthetic_config(cfg, seed))
    model_dir = out / "init_hf"
    processor = build_processor(
        str(model_dir),
        min_pixels=s["min_pixels"],
        max_pixels=s["max_pixels"],
        patch_size=PATCH_SIZE[model_family(cfg["model"])],
        corpus=synthetic_corpus() + [DEFAULT_SYSTEM_PROMPT],
        vocab_size=s["vocab_size"],
    )
    save_tiny_vl_model(model_dir, processor.tokenizer, cfg["model"], seed)
    return model_dir, paths


def save_tiny_vl_model(model_dir, tok, m: dict, seed: int):
    """A random tiny Qwen2.5-VL-architecture model of the sizes in `m` (the demo config's `model` section)
    whose vocabulary and special tokens are those of tokenizer `tok`, saved to model_dir beside the
    processor. Returns the transformers model."""
    return save_random_model(model_dir, tok, tiny_model_config(tok, m), seed)


# the demo model's family (its YAML's model.family) sets the vision patch size


def model_family(m: dict) -> str:
    """The demo YAML model section's family (default qwen2_5_vl); ValueError for an unknown one."""
    family = m.get("family", "qwen2_5_vl")
    if family not in PATCH_SIZE:
        raise ValueError(f"demo config: model.family {family!r} unknown; choose one of {sorted(PATCH_SIZE)}")
    return family


def tiny_model_config(tok, m: dict):
    """The transformers config of the demo's tiny model: the family and sizes in `m`, the vocabulary of `tok`."""
    from mmr1_mega.models.tiny import tiny_hf_config

    vocab = -(-len(tok) // 8) * 8  # divisible by any demo TP size
    return tiny_hf_config(
        model_type=model_family(m),
        vocab_size=vocab,
        hidden_size=m["hidden_size"],
        num_layers=m["num_layers"],
        num_heads=m["num_heads"],
        num_kv_heads=m["num_kv_heads"],
        intermediate_size=m["intermediate_size"],
        tie_word_embeddings=m["tie_word_embeddings"],
        vision_depth=m["vision_depth"],
        vision_hidden=m["vision_hidden"],
    )


def save_random_model(model_dir, tok, hf_cfg, seed: int):
    """A model of `hf_cfg`'s architecture with random weights (seeded), its special tokens (image, video,
    vision start / end, eos, pad) set to tokenizer `tok`'s ids, saved to model_dir beside the processor.
    The vocabulary may be larger than the tokenizer's (a released model's size). Returns the model."""
    import torch

    from mmr1_mega.models.registry import get_family

    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    hf_cfg.image_token_id = ids["<|image_pad|>"]
    hf_cfg.video_token_id = ids["<|video_pad|>"]
    hf_cfg.vision_start_token_id = ids["<|vision_start|>"]
    hf_cfg.vision_end_token_id = ids["<|vision_end|>"]
    if len(tok) > hf_cfg.text_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tok)} tokens, the model only {hf_cfg.text_config.vocab_size}"
        )
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    hf_cfg.text_config.eos_token_id = hf_cfg.eos_token_id = eos
    hf_cfg.text_config.pad_token_id = hf_cfg.pad_token_id = pad
    hf_cfg.text_config.bos_token_id = hf_cfg.bos_token_id = None
    torch.manual_seed(seed)
    model = get_family(hf_cfg.model_type).hf_class()(hf_cfg)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = None
    model.save_pretrained(model_dir)
    return model


def plot_curves(metrics_file: Path, sft_metrics_file: Path | None, out_png: Path) -> Path:
    """Reward, accuracy (train and validation), grad norm and clip fraction per step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmr1_mega.trainer.logger import read_metrics

    recs = read_metrics(metrics_file)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))

    def series(key):
        pts = [(r["step"], r[key]) for r in recs if key in r and r[key] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    panels = [
        ("reward/mean", "train reward (format + accuracy)"),
        ("reward/accuracy", "train accuracy"),
        ("val/accuracy", "validation accuracy (greedy)"),
        ("actor/grad_norm", "grad norm"),
        ("actor/pg_clipfrac_high", "clip fraction (high / low)"),
        ("reward/zero_std_group_frac", "groups with zero reward variance"),
    ]
    for ax, (key, title) in zip(axes.flat, panels):
        x, y = series(key)
        ax.plot(x, y, marker="o" if len(x) < 30 else None, label=key.split("/")[-1])
        if key == "actor/pg_clipfrac_high":
            x2, y2 = series("actor/pg_clipfrac_low")
            ax.plot(x2, y2, label="pg_clipfrac_low")
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    if sft_metrics_file is not None and sft_metrics_file.is_file():
        sft = read_metrics(sft_metrics_file)
        inset = axes.flat[3].inset_axes([0.55, 0.55, 0.42, 0.4])
        inset.plot([r["step"] for r in sft], [r.get("sft/loss") for r in sft], color="gray")
        inset.set_title("SFT loss", fontsize=8)
        inset.tick_params(labelsize=6)
    fig.suptitle("mmr1-mega CPU demo: GRPO + VAS after cold-start SFT")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmr1-mega demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (data, checkpoints, plots)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="demo YAML (model, task, SFT, GRPO)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides of the GRPO config (e.g. train.steps=10)"
    )
    args = parser.parse_args(argv)

    import yaml

    from mmr1_mega.config import load_config
    from mmr1_mega.distributed.cpu import disable_dynamo_without_cuda

    disable_dynamo_without_cuda()
    t0 = time.time()
    demo = yaml.safe_load(Path(args.config).read_text())
    seed = args.seed if args.seed is not None else demo.get("seed", 0)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo] building the synthetic task, processor and tiny model in {out}", flush=True)
    model_dir, paths = build_assets(out, demo, seed)

    train_yaml = out / "grpo.yaml"
    train_yaml.write_text(yaml.safe_dump(demo["grpo"]))
    common = [
        f"data.train_files=[{paths['train']}]",
        f"data.val_files=[{paths['val']}]",
        f"data.sft_files=[{paths['sft_train']}]",
        f"train.seed={seed}",
    ]
    sft_dir = out / "sft_hf"
    print("[demo] cold-start SFT", flush=True)
    rc = _launch_quiet(
        "sft",
        [
            str(train_yaml),
            f"model.hf_path={model_dir}",
            f"train.output_dir={out}",
            f"sft.export_dir={sft_dir}",
            *common,
        ],
    )
    if rc:
        return rc
    print("[demo] GRPO + VAS", flush=True)
    grpo_dir = out / "grpo"
    rc = _launch_quiet(
        "train",
        [
            str(train_yaml),
            f"model.hf_path={sft_dir}",
            f"train.output_dir={grpo_dir}",
            *common,
            *args.overrides,
        ],
    )
    if rc:
        return rc
    curves = plot_curves(grpo_dir / "metrics.jsonl", out / "sft" / "metrics.jsonl", out / "curves.png")
    cfg = load_config(train_yaml, [f"train.output_dir={grpo_dir}", *args.overrides])
    vas_png = _plot_vas(grpo_dir, out / "vas.png")
    summary = _summary(grpo_dir / "metrics.jsonl", time.time() - t0, curves, vas_png, cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def _launch_quiet(kind: str, argv: list[str]) -> int:
    from mmr1_mega.trainer.main import sft_main, train_main

    return (sft_main if kind == "sft" else train_main)(argv)


def _plot_vas(run_dir: Path, out_png: Path) -> Path | None:
    from mmr1_mega.trainer.checkpoint import STATE, complete_checkpoints

    found = complete_checkpoints(run_dir)
    if not found:
        return None
    from mmr1_mega.vas.plot import main as plot_main

    plot_main([str(found[-1] / STATE), "--out", str(out_png)])
    return out_png


def _summary(metrics_file: Path, seconds: float, curves: Path, vas_png, cfg) -> dict:
    from mmr1_mega.trainer.logger import read_metrics

    records = read_metrics(metrics_file)
    val = [(r["step"], r["val/accuracy"]) for r in records if "val/accuracy" in r]
    impl = sorted({r["impl/grpo_loss"] for r in records if "impl/grpo_loss" in r})
    start = val[0][1] if val else float("nan")
    best_final = val[-1][1] if val else float("nan")
    return {
        "val_accuracy_after_sft": start,
        "val_accuracy_after_rl": best_final,
        "improvement_points": 100 * (best_final - start),
        "val_curve": val,
        "seconds": round(seconds, 1),
        "curves_png": str(curves),
        "vas_png": None if vas_png is None else str(vas_png),
        "grpo_steps": cfg.train.steps,
        "grpo_loss_implementation": impl,
    }


if __name__ == "__main__":
    sys.exit(main())
