"""Batching: RL prompts left-padded (generation appends on the right), SFT sequences right-padded.

Both carry mm_token_type_ids (1 on image tokens, 2 on video tokens, 0 elsewhere and on padding): transformers
5.x Qwen2.5-VL silently falls back to 1-D positions without it, Qwen2-VL / Qwen3-VL raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmr1_mega.data.sft_dataset import IGNORE_INDEX


def _pad(rows: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            if left:
                out[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            else:
                out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _images(samples: Sequence[dict]) -> dict[str, torch.Tensor]:
    pixels = [s["pixel_values"] for s in samples]
    grids = [s["image_grid_thw"] for s in samples]
    dim = pixels[0].shape[-1] if pixels else 0
    return {
        "pixel_values": torch.cat(pixels) if pixels else torch.zeros(0, dim),
        "image_grid_thw": torch.cat(grids).long() if grids else torch.zeros(0, 3, dtype=torch.long),
        "num_images": torch.tensor([len(g) for g in grids], dtype=torch.long),
    }


def collate_rl(samples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Batch RL samples (RLDataset items built with a processor).

    Takes: samples, the pad token id. Returns: input_ids / attention_mask / mm_token_type_ids [B, L] (left
    padded), pixel_values (all images of the batch, in sample order), image_grid_thw [images, 3],
    num_images [B], and the lists index, id, problem, answer. Raises: KeyError if a sample lacks token ids.
    """
    ids = [s["input_ids"] for s in samples]
    batch = {
        "input_ids": _pad(ids, pad_token_id, left=True),
        "attention_mask": _pad([[1] * len(r) for r in ids], 0, left=True),
        "mm_token_type_ids": _pad([s["mm_token_type_ids"] for s in samples], 0, left=True),
        **_images(samples),
    }
    for key in ("index", "id", "problem", "answer"):
        batch[key] = [s[key] for s in samples]
    return batch


def collate_sft(samples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Batch SFT samples (SFTDataset items).

    Takes: samples, the pad token id. Returns: input_ids / attention_mask / mm_token_type_ids / labels [B, L]
    (right padded; labels are IGNORE_INDEX off assistant tokens and on padding, and not shifted),
    pixel_values, image_grid_thw, num_images [B].
    """
    ids = [s["input_ids"] for s in samples]
    return {
        "input_ids": _pad(ids, pad_token_id, left=False),
        "attention_mask": _pad([[1] * len(r) for r in ids], 0, left=False),
        "mm_token_type_ids": _pad([s["mm_token_type_ids"] for s in samples], 0, left=False),
        "labels": _pad([s["labels"] for s in samples], IGNORE_INDEX, left=False),
        **_images(samples),
    }
