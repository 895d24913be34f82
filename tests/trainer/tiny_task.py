"""A tiny synthetic task + model + GRPO config for the trainer tests (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import yaml

from mmr1_mega.trainer.demo import build_assets

TINY = {
    "synthetic": {
        "num_train": 24,
        "num_val": 8,
        "num_sft": 16,
        "levels": [1, 2],
        "min_pixels": 3136,
        "max_pixels": 3136,
        "vocab_size": 300,
    },
    "model": {
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 64,
        "tie_word_embeddings": True,
        "vision_depth": 1,
        "vision_hidden": 32,
    },
}


def grpo_config(out: Path, model_dir: Path, paths: dict, **sections) -> dict:
    cfg = {
        "model": {"hf_path": str(model_dir), "dtype": "fp32"},
        "optim": {"lr": 1e-3},
        "sft": {"steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0},
        "rollout": {"n_samples": 4, "temperature": 1.0, "max_new_tokens": 24},
        "loss": {"kl_coef": 0.01},
        "vas": {"n_rollouts": 4, "update_every_steps": 2, "refresh_share": 0.5, "progress": False},
        "data": {
            "train_files": [paths["train"]],
            "val_files": [paths["val"]],
            "sft_files": [paths["sft_train"]],
            "min_pixels": 3136,
            "max_pixels": 3136,
            "max_prompt_len": 256,
        },
        "train": {
            "steps": 3,
            "prompts_per_step": 4,
            "micro_batch_size": 4,
            "val_every_steps": 3,
            "val_max_prompts": 4,
            "output_dir": str(out),
        },
        "checkpoint": {"save_every_steps": 2, "keep_last": 2},
        "log": {"wandb": "off", "tensorboard": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_task(root: Path, sft_steps: int = 80):
    """Task files and a policy: the tiny model after a short cold-start SFT, so that rollouts earn
    non-zero and varied rewards (a random model scores 0 everywhere and GRPO would see no signal)."""
    from mmr1_mega.trainer.main import sft_main

    model_dir, paths = build_assets(root, TINY, seed=0)
    cfg = write_config(root / "sft.yaml", grpo_config(root / "sft_run", model_dir, paths))
    sft_dir = root / "sft_hf"
    overrides = [f"sft.steps={sft_steps}", "sft.batch_size=16", "sft.lr=1e-2", f"sft.export_dir={sft_dir}"]
    assert sft_main([str(cfg), *overrides]) == 0
    return sft_dir, paths
