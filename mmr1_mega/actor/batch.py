"""The actor's batch: prompt + response sequences, right-padded, with their images and per-sequence data.

Layout (CPU tensors until a micro-batch is moved to the device):
- input_ids [B, S]: prompt tokens then response tokens, then padding (pad id 0). Right padding needs no
  attention mask under causal attention.
- attention_mask [B, S]: 1 on real tokens (prompt and response), 0 on padding.
- image_mask [B, S]: True on the prompt's image and video placeholder tokens (a response may contain a
  placeholder token id too: it is text there, not a visual slot).
- response_mask [B, S]: 1 on response tokens (the tokens the policy generated and is trained on).
- position_ids [3, B, S]: mrope positions (models.qwen_vl.rope), 0 on padding.
- pixel_values [P, D] and image_grid_thw [I, 3]: every sample's visual items (images, videos, or for
  Qwen3-VL video frames: models.qwen_vl.rope.visual_items), in sample and placeholder order;
  images_per_sample [B] says which belong to whom.
- per sequence: rewards, group_ids, advantages [B]; per token: old_logp, ref_logp [B, S] (filled in later).
Log-probabilities are aligned with the token they score: logp[b, t] = log p(input_ids[b, t] | tokens < t).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch

from mmr1_mega.models.qwen_vl.rope import mrope_position_ids

PER_SEQUENCE = ("rewards", "group_ids", "advantages")
PER_TOKEN = (
    "input_ids",
    "attention_mask",
    "response_mask",
    "image_mask",
    "old_logp",
    "ref_logp",
    "engine_logp",
)


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    position_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    images_per_sample: torch.Tensor
    image_mask: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    group_ids: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    # the rollout engine's raw log-prob of each response token (aligned with input_ids; 0 elsewhere)
    engine_logp: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def _patch_ranges(self) -> list[tuple[int, int]]:
        """[start, stop) rows of pixel_values and of image_grid_thw for each sample."""
        if self.image_grid_thw is None:
            return [(0, 0)] * len(self)
        patches = self.image_grid_thw.prod(-1).tolist()
        ranges, img, row = [], 0, 0
        for n in self.images_per_sample.tolist():
            p = int(sum(patches[img : img + n]))
            ranges.append((row, row + p))
            img, row = img + n, row + p
        return ranges

    def select(self, indices: Sequence[int]) -> RolloutBatch:
        """The samples at `indices`, in that order, trimmed to their longest real length."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in PER_SEQUENCE + PER_TOKEN and v is not None:
                values[f.name] = v[idx]
        values["position_ids"] = self.position_ids[:, idx]
        values["images_per_sample"] = self.images_per_sample[idx]
        if self.image_grid_thw is not None and int(values["images_per_sample"].sum()) > 0:
            ranges = self._patch_ranges()
            first_image = torch.cumsum(self.images_per_sample, 0) - self.images_per_sample
            values["pixel_values"] = torch.cat(
                [self.pixel_values[ranges[i][0] : ranges[i][1]] for i in idx.tolist()]
            )
            values["image_grid_thw"] = torch.cat(
                [
                    self.image_grid_thw[first_image[i] : first_image[i] + self.images_per_sample[i]]
                    for i in idx.tolist()
                ]
            )
        else:
            values["pixel_values"] = None
            values["image_grid_thw"] = None
        out = RolloutBatch(**values, extras=dict(self.extras))
        return out.trim()

    def trim(self, multiple: int = 1) -> RolloutBatch:
        """Drop padding columns beyond the longest real sequence (rounded up to `multiple`)."""
        cols = torch.nonzero(self.attention_mask.bool().any(0))
        length = int(cols.max()) + 1 if len(cols) else 1
        return self.pad_to(-(-length // multiple) * multiple)

    def pad_to(self, length: int) -> RolloutBatch:
        """Right-pad (or cut padding) to exactly `length` columns."""
        if length == self.seq_len:
            return self

        def fit(t: torch.Tensor | None, dim: int) -> torch.Tensor | None:
            if t is None:
                return None
            if t.shape[dim] >= length:
                return t.narrow(dim, 0, length)
            shape = list(t.shape)
            shape[dim] = length - t.shape[dim]
            return torch.cat([t, t.new_zeros(shape)], dim=dim)

        return replace(
            self,
            **{n: fit(getattr(self, n), 1) for n in PER_TOKEN},
            position_ids=fit(self.position_ids, 2),
        )

    @property
    def lengths(self) -> list[int]:
        """Each sample's real length (prompt + response tokens)."""
        return self.attention_mask.sum(1).tolist()

    def partition(self, size: int, max_tokens: int = 0, packed: bool = True) -> list[list[int]]:
        """Sample indices of each micro-batch: consecutive runs of `size` samples, or, with max_tokens > 0,
        micro-batches of at most max_tokens tokens: with packed, a balanced partition of the real lengths
        (`balanced_partition`); right-padded, rows x the longest sample (`padded_partition`). Every rank
        holding this batch gets the same partition."""
        if max_tokens > 0:
            return (balanced_partition if packed else padded_partition)(self.lengths, max_tokens)
        return [list(range(i, min(i + size, len(self)))) for i in range(0, len(self), size)]

    def micro_batches(
        self, size: int, multiple: int = 1, max_tokens: int = 0, packed: bool = True
    ) -> list[RolloutBatch]:
        """The micro-batches of `partition`, each trimmed to its own length."""
        return [self.select(idx).trim(multiple) for idx in self.partition(size, max_tokens, packed)]


def _check_fits(lengths: list[int], max_tokens: int) -> None:
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if lengths and max(lengths) > max_tokens:
        longest = max(range(len(lengths)), key=lambda i: lengths[i])
        raise ValueError(
            f"sample {longest} has {lengths[longest]} tokens, more than train.max_tokens_per_micro_batch "
            f"({max_tokens}): raise it to at least the longest prompt + response"
        )


def padded_partition(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices 0..n-1 in groups whose right-padded size (rows x the longest length) is at most max_tokens:
    longest first, each group takes the next samples while they fit (sorting keeps similar lengths
    together, so little padding). Groups hold indices in increasing order, ordered by their first index.
    Raises ValueError when one sequence alone is longer than max_tokens."""
    lengths = [int(n) for n in lengths]
    _check_fits(lengths, max_tokens)
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return sorted((sorted(g) for g in groups), key=lambda g: g[0])


def balanced_partition(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices 0..n-1 split into the fewest groups whose lengths sum to at most max_tokens, balanced.

    For k = ceil(total / max_tokens), k + 1, ...: longest-first greedy (each length, longest first, to the
    group with the smallest sum so far; ties to the lower group), the first k whose largest group fits.
    Longest-first greedy is within 4/3 of the best largest-group sum for k groups, so micro-batches cost
    about the same (what pipeline stages wait for). Deterministic: every rank with the same lengths gets the
    same groups. Groups hold indices in increasing order and are ordered by their first index.
    Raises ValueError when one sequence alone is longer than max_tokens.
    """
    lengths = [int(n) for n in lengths]
    _check_fits(lengths, max_tokens)
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    k = max(1, -(-sum(lengths) // max_tokens))
    while True:
        sums, groups = [0] * k, [[] for _ in range(k)]
        for i in order:
            g = min(range(k), key=lambda j: (sums[j], j))
            sums[g] += lengths[i]
            groups[g].append(i)
        if max(sums) <= max_tokens:
            return sorted((sorted(g) for g in groups if g), key=lambda g: g[0])
        k += 1


def build_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pixel_values: Sequence[torch.Tensor | None],
    image_grid_thw: Sequence[torch.Tensor | None],
    image_token_id: int,
    spatial_merge_size: int,
    video_token_id: int | None = None,
    time_intervals: Sequence[torch.Tensor | None] | None = None,
) -> RolloutBatch:
    """Assemble a RolloutBatch from per-sample prompt ids, response ids and visual items.

    pixel_values[i] / image_grid_thw[i] are sample i's visual items in placeholder order (None for a
    text-only prompt); video placeholders (video_token_id) count as visual slots too; time_intervals[i]: the
    items' rope temporal spacing (Qwen2.5-VL videos; default 1). A response may be empty (then its sample
    trains on nothing).
    """
    n = len(prompt_ids)
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    seq = max(max(lengths), 1)
    input_ids = torch.zeros(n, seq, dtype=torch.long)
    attention = torch.zeros(n, seq, dtype=torch.long)
    response_mask = torch.zeros(n, seq, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[i, : len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
        attention[i, : len(p) + len(r)] = 1
        response_mask[i, len(p) : len(p) + len(r)] = 1
    grids = [g for g in image_grid_thw if g is not None and len(g)]
    grid = torch.cat(grids) if grids else None
    pix = [p for p in pixel_values if p is not None and len(p)]
    images_per_sample = torch.tensor([0 if g is None else len(g) for g in image_grid_thw], dtype=torch.long)
    types = (input_ids == image_token_id).long()
    if video_token_id is not None:
        types += 2 * (input_ids == video_token_id).long()
    types *= response_mask == 0
    intervals = None
    if time_intervals is not None:
        given = [
            torch.ones(len(g)) if t is None else torch.as_tensor(t, dtype=torch.float64)
            for g, t in zip(image_grid_thw, time_intervals)
            if g is not None and len(g)
        ]
        intervals = torch.cat(given) if given else None
    positions, _ = mrope_position_ids(input_ids, types, grid, spatial_merge_size, attention, intervals)
    return RolloutBatch(
        image_mask=types > 0,
        input_ids=input_ids,
        attention_mask=attention,
        response_mask=response_mask,
        position_ids=positions,
        pixel_values=torch.cat(pix) if pix else None,
        image_grid_thw=grid,
        images_per_sample=images_per_sample,
    )


def build_sft_batch(
    input_ids: Sequence[Sequence[int]],
    label_masks: Sequence[Sequence[bool]],
    pixel_values: Sequence[torch.Tensor | None],
    image_grid_thw: Sequence[torch.Tensor | None],
    image_token_id: int,
    spatial_merge_size: int,
    video_token_id: int | None = None,
) -> RolloutBatch:
    """A RolloutBatch for supervised fine-tuning: response_mask marks the trained (assistant) tokens,
    which may be several spans per conversation."""
    batch = build_batch(
        input_ids,
        [[] for _ in input_ids],
        pixel_values,
        image_grid_thw,
        image_token_id,
        spatial_merge_size,
        video_token_id,
    )
    for i, mask in enumerate(label_masks):
        batch.response_mask[i, : len(mask)] = torch.tensor([int(bool(m)) for m in mask], dtype=torch.long)
    return batch
