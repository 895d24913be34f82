"""megatron distributed checkpoints of a model (any TP / PP layout in, any layout out).

A checkpoint directory holds megatron's dist_checkpointing files, `hf_assets/` (the HF config, tokenizer
and processor files, so the checkpoint alone can be exported or served), and `mmr1_model.json` (model
type and the layout it was saved at, for messages).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps

from mmr1_mega.models.hf_io import CheckpointError, copy_assets
from mmr1_mega.models.weights import unwrap

ASSETS = "hf_assets"
META = "mmr1_model.json"


def save_model_checkpoint(model, ckpt_dir: str | os.PathLike, hf_assets_dir: str | os.PathLike) -> None:
    """Save the model's shards as a distributed checkpoint (collective over all ranks)."""
    ckpt_dir = Path(ckpt_dir)
    if dist.get_rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / ASSETS).mkdir(exist_ok=True)
        copy_assets(hf_assets_dir, ckpt_dir / ASSETS)
    dist.barrier()
    module = unwrap(model)
    dist_checkpointing.save(module.sharded_state_dict(), str(ckpt_dir))
    if dist.get_rank() == 0:
        meta = {
            "model_type": module_config_type(ckpt_dir),
            "tensor_parallel": ps.get_tensor_model_parallel_world_size(),
            "pipeline_parallel": ps.get_pipeline_model_parallel_world_size(),
        }
        (ckpt_dir / META).write_text(json.dumps(meta, indent=2))
    dist.barrier()


def module_config_type(ckpt_dir: Path) -> str:
    return json.loads((Path(ckpt_dir) / ASSETS / "config.json").read_text())["model_type"]


def check_model_checkpoint(ckpt_dir: str | os.PathLike) -> Path:
    """Raise CheckpointError unless ckpt_dir is a complete model checkpoint; returns its hf_assets dir."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist")
    if not (ckpt_dir / "metadata.json").is_file():
        raise CheckpointError(
            f"{ckpt_dir} is not a megatron distributed checkpoint (no metadata.json): incomplete save, or "
            "an HF directory (use convert hf-to-mcore)?"
        )
    if not (ckpt_dir / ASSETS / "config.json").is_file():
        raise CheckpointError(f"{ckpt_dir} has no {ASSETS}/config.json: it was not written by mmr1-mega")
    return ckpt_dir / ASSETS


def load_model_checkpoint(model, ckpt_dir: str | os.PathLike) -> None:
    """Load a distributed checkpoint saved at any layout into the model built at the current layout."""
    check_model_checkpoint(ckpt_dir)
    module = unwrap(model)
    state = dist_checkpointing.load(module.sharded_state_dict(), str(ckpt_dir))
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
