"""Sequence packing for the local (non transformer-engine) spec: several samples in one row.

Each sample keeps its own mrope positions (restarting at 0) and attends only to itself, through a
block-diagonal causal mask; images stay in sample order, so the packed row takes the concatenated
pixel_values / image_grid_thw unchanged. transformer-engine runs use THD packing (PackedSeqParams) instead,
which needs no dense mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack_rows(
    input_ids: torch.Tensor, position_ids: torch.Tensor, lengths: Sequence[int], multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack the first lengths[i] tokens of each right-padded row into one row.

    input_ids [B, S], position_ids [3, B, S] (per-sample positions). Returns input_ids [1, T],
    position_ids [3, 1, T] and attention_mask [1, 1, T, T] (True = masked: other samples, the future and
    the padding up to a multiple of `multiple`).
    """
    ids = [input_ids[i, :n] for i, n in enumerate(lengths)]
    pos = [position_ids[:, i, :n] for i, n in enumerate(lengths)]
    total = sum(lengths)
    padded = -(-total // multiple) * multiple
    packed_ids = torch.zeros(1, padded, dtype=input_ids.dtype)
    packed_ids[0, :total] = torch.cat(ids)
    packed_pos = torch.zeros(3, 1, padded, dtype=position_ids.dtype)
    packed_pos[:, 0, :total] = torch.cat(pos, dim=1)
    sample = torch.full((padded,), -1, dtype=torch.long)
    start = 0
    for i, n in enumerate(lengths):
        sample[start : start + n] = i
        start += n
    same = (sample[:, None] == sample[None, :]) & (sample[:, None] >= 0)
    causal = torch.ones(padded, padded, dtype=torch.bool).tril()
    allowed = same & causal
    allowed |= torch.eye(padded, dtype=torch.bool)  # padding rows attend to themselves (no NaN rows)
    return packed_ids, packed_pos, (~allowed)[None, None]


def unpack_rows(packed: torch.Tensor, lengths: Sequence[int]) -> list[torch.Tensor]:
    """Split a packed [1, T, ...] output back into per-sample [lengths[i], ...] tensors."""
    out, start = [], 0
    for n in lengths:
        out.append(packed[0, start : start + n])
        start += n
    return out
