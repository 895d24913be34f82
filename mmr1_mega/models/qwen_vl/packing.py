"""Sequence packing: several samples per row, each attending only to itself.

Each sample keeps its own mrope positions (the 3-D positions computed for the padded batch,
models.qwen_vl.rope, carried over token by token: they restart for every sample) and its own causal
attention. Samples are packed in the order given, so the image placeholder tokens of the packed rows (read
row by row) come in the same order as the micro-batch's images: pixel_values / image_grid_thw go in
unchanged. Two forms:

- THD (transformer-engine): all samples in one row with `PackedSeqParams` (cu_seqlens); the attention
  kernels skip what lies between samples. megatron-core applies rope in THD form per sequence; given one
  frequency row per packed token (which the packed row's mrope positions produce) it maps them by offset
  (rope_utils._apply_rotary_pos_emb_thd's "exact mapping", taken when the frequencies cover cu_seqlens[-1]
  tokens: the padding at the end is therefore a segment of cu_seqlens too). Fused rope must stay off (TE's
  THD kernel indexes frequencies by position within each sequence, 0..L-1, wrong for mrope's image
  positions): the bridge sets apply_rope_fusion=False.
- Block-diagonal rows (the local spec, whose attention is dense: it computes every pair of a row, masked or
  not): rows of W tokens, each holding consecutive samples under a block-diagonal causal mask
  [R, 1, W, W]. The linear layers see R x W positions instead of the padded batch's B x W_longest, and
  attention costs R x W^2. (One row of all samples, W = the sum of the lengths, made the CPU demo's train
  phase 3.6x slower than padding: attention grows with the square of the row.)
  `choose_rows` picks the row width (a multiple of the longest sample's) that costs the fewest model FLOPs
  and which samples share a row (first-fit decreasing); the caller orders the samples so.

Rows are padded to a multiple of `multiple` (the TP size under sequence parallelism).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PackedRow:
    """Packed rows: model inputs, and where each sample's tokens are (for mapping outputs back)."""

    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [3, R, W]
    lengths: list[int]  # each sample's real length, in packing order
    offsets: list[int]  # each sample's first token in the flattened [R * W] rows
    image_mask: torch.Tensor | None = None  # [R, W]
    attention_mask: torch.Tensor | None = None  # [R, 1, W, W] bool, True = masked (block-diagonal rows)
    cu_seqlens: torch.Tensor | None = None  # [segments + 1] int32 (THD: one row)

    @property
    def total(self) -> int:
        return self.input_ids.numel()

    def packed_seq_params(self):
        """megatron-core PackedSeqParams (THD) of this row, or None for block-diagonal rows."""
        if self.cu_seqlens is None:
            return None
        from megatron.core.packed_seq_params import PackedSeqParams

        cu = self.cu_seqlens.to(self.input_ids.device)
        longest = int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max())
        return PackedSeqParams(
            qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest
        )


def row_width(lengths: Sequence[int], multiple: int = 1) -> int:
    """Width of block-diagonal rows: the longest sample, rounded up to `multiple`."""
    return -(-max(int(n) for n in lengths) // multiple) * multiple


def row_plan(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Samples into rows of `width` tokens, first-fit decreasing (longest first, each into the first row
    with room): the fewest rows to within 11/9 of the best. Deterministic; rows in order of creation."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        n = int(lengths[i])
        if n > width:
            raise ValueError(f"sample {i} has {n} tokens, more than the row width {width}")
        for r, free in enumerate(room):
            if free >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(width - n)
    return rows


def choose_rows(
    lengths: Sequence[int], multiple: int, per_position: float, per_pair: float
) -> tuple[int, list[list[int]]]:
    """The row width and row plan of block-diagonal rows that cost the fewest model FLOPs.

    A row of width W costs per_position x W (the linear layers, padding included) + per_pair x W^2 (dense
    attention computes every pair of the row, masked or not). Wider rows waste less on padding and more on
    attention; the widths tried are 1, 2, 3, ... times the longest sample (rounded up to `multiple`), up
    to one row of everything. Returns (width, row_plan at that width)."""
    lengths = [int(n) for n in lengths]
    base, total = row_width(lengths, multiple), sum(lengths)
    best = None
    for k in range(1, len(lengths) + 1):
        width = base * k
        plan = row_plan(lengths, width)
        cost = len(plan) * (per_position * width + per_pair * width * width)
        if best is None or cost < best[0]:
            best = (cost, width, plan)
        if width >= total:
            break
    return best[1], best[2]


def pack(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    lengths: Sequence[int],
    multiple: int = 1,
    image_mask: torch.Tensor | None = None,
    thd: bool = False,
    rows: Sequence[int] | None = None,
    width: int | None = None,
) -> PackedRow:
    """Pack the first lengths[i] tokens of each right-padded row i, in the given order.

    input_ids [B, S], position_ids [3, B, S] (per-sample positions), image_mask [B, S] or None.
    thd: one row with THD cu_seqlens (transformer-engine). Otherwise block-diagonal rows of
    `width` tokens (default row_width(lengths, multiple); a multiple of `multiple`) holding rows[r]
    consecutive samples each (default: as many as fit, in order; `row_plan` + ordering the samples by it
    packs tighter).
    """
    lengths = [int(n) for n in lengths]
    if len(lengths) != input_ids.shape[0] or any(n < 1 or n > input_ids.shape[1] for n in lengths):
        raise ValueError(f"lengths {lengths} do not fit input_ids of shape {tuple(input_ids.shape)}")
    total = sum(lengths)
    if thd:
        width, counts = -(-total // multiple) * multiple, [len(lengths)]
    else:
        width = width or row_width(lengths, multiple)
        if width % multiple:
            raise ValueError(f"row width {width} is not a multiple of {multiple}")
        counts = list(rows) if rows is not None else _next_fit(lengths, width)
    if sum(counts) != len(lengths):
        raise ValueError(f"rows {counts} do not hold the {len(lengths)} samples")
    offsets, sample = [], torch.full((len(counts) * width,), -1, dtype=torch.long)
    k = 0
    for r, count in enumerate(counts):
        pos = r * width
        for i in range(k, k + count):
            offsets.append(pos)
            sample[pos : pos + lengths[i]] = i
            pos += lengths[i]
        if pos > (r + 1) * width:
            raise ValueError(f"row {r} holds {pos - r * width} tokens, more than its width {width}")
        k += count
    keep = torch.arange(input_ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]  # [B, S]
    where = sample >= 0  # packed positions holding a token, filled in sample order (row-major)
    shape = (len(counts), width)
    ids = input_ids.new_zeros(shape).view(-1)
    ids[where] = input_ids[keep]
    pos = position_ids.new_zeros(3, len(counts) * width)
    pos[:, where] = position_ids[:, keep]
    row = PackedRow(ids.view(shape), pos.view(3, *shape), lengths, offsets)
    if image_mask is not None:
        img = image_mask.new_zeros(shape).view(-1)
        img[where] = image_mask[keep]
        row.image_mask = img.view(shape)
    if thd:
        bounds = offsets + [total] + ([width] if width > total else [])  # the padding: a segment of its own
        row.cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
        return row
    sample = sample.view(shape)
    same = (sample[:, :, None] == sample[:, None, :]) & (sample[:, :, None] >= 0)
    allowed = same & torch.ones(width, width, dtype=torch.bool).tril()
    allowed |= torch.eye(width, dtype=torch.bool)  # padding positions attend to themselves (no NaN rows)
    row.attention_mask = (~allowed)[:, None]
    return row


def _next_fit(lengths: list[int], width: int) -> list[int]:
    counts, used = [], width
    for n in lengths:
        if used + n > width:
            counts.append(0)
            used = 0
        counts[-1] += 1
        used += n
    return counts


def unpack_rows(packed: torch.Tensor, row: PackedRow) -> list[torch.Tensor]:
    """Each sample's [lengths[i], ...] slice of a packed [R, W, ...] output."""
    flat = packed.reshape(-1, *packed.shape[2:])
    return [flat[o : o + n] for o, n in zip(row.offsets, row.lengths)]


def unpack_padded(packed: torch.Tensor, row: PackedRow, width: int, skip_first: bool = False) -> torch.Tensor:
    """A packed per-token [R, W] tensor as right-padded rows [n, width] (zeros beyond each sample's length;
    with skip_first also at each sample's first token, where a packed next-token score would come from the
    token before it in the row). Differentiable (one gather, one index_put)."""
    dev = packed.device
    lengths = torch.tensor(row.lengths, device=dev)
    cols = torch.arange(width, device=dev)
    keep = cols[None, :] < lengths[:, None]
    if skip_first:
        keep[:, 0] = False
    source = (torch.tensor(row.offsets, device=dev)[:, None] + cols[None, :])[keep]
    out = packed.new_zeros(len(row.lengths), width)
    return out.index_put(keep.nonzero(as_tuple=True), packed.reshape(-1)[source])
