"""Sequence packing: the samples of a micro-batch in one row, each attending only to itself.

Each sample keeps its own mrope positions (they restart at 0 for every sample: the 3-D positions computed
for the padded batch, models.qwen_vl.rope, carried over token by token) and its own causal attention.
Images stay in sample order, so the packed row takes the micro-batch's concatenated pixel_values /
image_grid_thw unchanged.

Two forms of "attends only to itself":
- the local spec (no transformer-engine): a dense block-diagonal causal mask [1, 1, T, T];
- transformer-engine: THD `PackedSeqParams` (cu_seqlens), no dense mask. megatron-core applies rope in THD
  form per sequence; given one frequency row per packed token (which the mrope positions of the packed row
  produce) it maps them by offset (rope_utils._apply_rotary_pos_emb_thd's "exact mapping": taken when the
  frequencies cover cu_seqlens[-1] tokens, so the padding at the end is a segment of cu_seqlens too).
  Fused rope (TE's THD kernel indexes frequencies by position within each sequence, i.e. 0..L-1, wrong for
  mrope's image positions) must stay off: the bridge sets apply_rope_fusion=False.

The row is padded to a multiple of `multiple` (the TP size under sequence parallelism).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PackedRow:
    """One packed row: model inputs and how to map its outputs back to the samples."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [3, 1, T]
    lengths: list[int]  # real length of each sample, in packing order
    image_mask: torch.Tensor | None = None  # [1, T]
    attention_mask: torch.Tensor | None = None  # [1, 1, T, T] bool, True = masked (local spec)
    cu_seqlens: torch.Tensor | None = None  # [n (+ 1 for the padding) + 1] int32 (THD)

    @property
    def total(self) -> int:
        return int(sum(self.lengths))

    def packed_seq_params(self):
        """megatron-core PackedSeqParams (THD) of this row, or None for the dense-mask form."""
        if self.cu_seqlens is None:
            return None
        from megatron.core.packed_seq_params import PackedSeqParams

        cu = self.cu_seqlens.to(self.input_ids.device)
        longest = int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max())
        return PackedSeqParams(
            qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest
        )


def pack(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    lengths: Sequence[int],
    multiple: int = 1,
    image_mask: torch.Tensor | None = None,
    thd: bool = False,
) -> PackedRow:
    """Pack the first lengths[i] tokens of each right-padded row i into one row.

    input_ids [B, S], position_ids [3, B, S] (per-sample positions), image_mask [B, S] or None.
    thd: THD cu_seqlens (transformer-engine) instead of the dense block-diagonal mask.
    """
    lengths = [int(n) for n in lengths]
    if len(lengths) != input_ids.shape[0] or any(n < 1 or n > input_ids.shape[1] for n in lengths):
        raise ValueError(f"lengths {lengths} do not fit input_ids of shape {tuple(input_ids.shape)}")
    total = sum(lengths)
    padded = -(-total // multiple) * multiple
    keep = torch.arange(input_ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]  # [B, S]
    ids = input_ids.new_zeros(1, padded)
    ids[0, :total] = input_ids[keep]
    pos = position_ids.new_zeros(3, 1, padded)
    pos[:, 0, :total] = position_ids[:, keep]
    mask_img = None
    if image_mask is not None:
        mask_img = image_mask.new_zeros(1, padded)
        mask_img[0, :total] = image_mask[keep]
    row = PackedRow(ids, pos, lengths, image_mask=mask_img)
    bounds = [0] + torch.tensor(lengths).cumsum(0).tolist()
    if thd:
        if padded > total:
            bounds.append(padded)  # the padding is a segment of its own
        row.cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
        return row
    sample = torch.full((padded,), -1, dtype=torch.long)
    for i in range(len(lengths)):
        sample[bounds[i] : bounds[i + 1]] = i
    same = (sample[:, None] == sample[None, :]) & (sample[:, None] >= 0)
    allowed = same & torch.ones(padded, padded, dtype=torch.bool).tril()
    allowed |= torch.eye(padded, dtype=torch.bool)  # padding positions attend to themselves (no NaN rows)
    row.attention_mask = (~allowed)[None, None]
    return row


def pack_rows(
    input_ids: torch.Tensor, position_ids: torch.Tensor, lengths: Sequence[int], multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pack` in the dense-mask form as (input_ids [1, T], position_ids [3, 1, T], mask [1, 1, T, T])."""
    row = pack(input_ids, position_ids, lengths, multiple)
    return row.input_ids, row.position_ids, row.attention_mask


def unpack_rows(packed: torch.Tensor, lengths: Sequence[int]) -> list[torch.Tensor]:
    """Split a packed [1, T, ...] output back into per-sample [lengths[i], ...] tensors."""
    out, start = [], 0
    for n in lengths:
        out.append(packed[0, start : start + n])
        start += n
    return out


def unpack_padded(
    packed: torch.Tensor, lengths: Sequence[int], width: int, skip_first: bool = False
) -> torch.Tensor:
    """A packed per-token [1, T] tensor as right-padded rows [n, width] (zeros beyond each sample's
    length; with skip_first also at each sample's first token, where a packed next-token score would
    come from the previous sample). Differentiable (one index_put)."""
    lengths = [int(n) for n in lengths]
    cols = torch.arange(width, device=packed.device)
    keep = cols[None, :] < torch.tensor(lengths, device=packed.device)[:, None]
    source = torch.arange(sum(lengths), device=packed.device)
    if skip_first:
        starts = torch.tensor([0] + lengths[:-1], device=packed.device).cumsum(0)
        first = torch.zeros(sum(lengths), dtype=torch.bool, device=packed.device)
        first[starts] = True
        keep[:, 0] = False
        source = source[~first]
    out = packed.new_zeros(len(lengths), width)
    return out.index_put(keep.nonzero(as_tuple=True), packed[0, source])
