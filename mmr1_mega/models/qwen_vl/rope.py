"""3-D multimodal rope positions (mrope) for Qwen2-VL, Qwen2.5-VL and Qwen3-VL, as transformers computes them
(transformers 5.x, `get_rope_index` of each family), and the order of a batch's visual items.

Text tokens advance all three axes (temporal, height, width) together by one. A visual item (an image, a video,
or for Qwen3-VL one video frame) of LLM grid (t, h, w) = (grid_t, grid_h / merge, grid_w / merge) starting at
position p gets temporal p + int(arange(t) * interval), height p + [0, h), width p + [0, w) on its grid; the text
after it continues at p + max(h, w). The interval is 1 except for Qwen2.5-VL videos (tokens_per_second *
second_per_grid_t). Padding positions are 0.

Visual items: the project carries a batch's images and videos as one list of items in the order their
placeholder runs appear (row by row), one grid row and one block of patch rows each, with the tokens' modality
(mm_token_type_ids: 1 image, 2 video) telling them apart. Qwen3-VL writes each video frame as its own run
(a timestamp text, vision_start, the frame's video tokens, vision_end) and its rope index splits a video of grid
(t, h, w) into t grids (1, h, w); its vision tower attends within each frame and embeds positions per frame, so
a frame is an item of its own there too (`visual_items(..., split_video_frames=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEXT, IMAGE, VIDEO = 0, 1, 2


def image_position_ids(start: int, grid_thw: torch.Tensor, merge: int, interval: float = 1.0) -> torch.Tensor:
    """Positions [3, t*h*w] of one visual item's LLM tokens starting at `start`."""
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    temporal = (torch.arange(t) * interval).long()  # transformers' get_vision_position_ids: int after scaling
    tt, hh, ww = torch.meshgrid(temporal, torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt, hh, ww]).reshape(3, -1) + start


def _runs(types: list[int]) -> list[tuple[int, int, int]]:
    """(type, start, stop) of each run of equal values."""
    runs, i, n = [], 0, len(types)
    while i < n:
        j = i
        while j < n and types[j] == types[i]:
            j += 1
        runs.append((types[i], i, j))
        i = j
    return runs


def mrope_position_ids(
    input_ids: torch.Tensor,
    token_types: torch.Tensor,
    visual_grid_thw: torch.Tensor | None,
    spatial_merge_size: int,
    attention_mask: torch.Tensor | None = None,
    time_intervals: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D positions for a batch.

    input_ids, attention_mask (1 = real token): [batch, seq]. token_types [batch, seq]: the modality of each
    visual slot (1 image, 2 video, 0 text; a bool mask means image slots). visual_grid_thw: [items, 3], the
    visual items in the order their placeholder runs appear in the batch (row by row; `visual_items`).
    time_intervals: [items] temporal spacing per item (default 1). Returns (position_ids [3, batch, seq] int64,
    rope_deltas [batch]: max position + 1 - number of real tokens, which generation adds to text positions
    after the prompt). Raises ValueError when placeholder runs and grids disagree.
    """
    b, s = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    valid = attention_mask.bool()
    token_types = token_types.long() * valid
    positions = torch.zeros(3, b, s, dtype=torch.long)
    deltas = torch.zeros(b, dtype=torch.long)
    grids = list(visual_grid_thw) if visual_grid_thw is not None else []
    intervals = [1.0] * len(grids) if time_intervals is None else [float(x) for x in time_intervals]
    item = 0
    for row in range(b):
        types = token_types[row][valid[row]].tolist()
        pieces, pos = [], 0
        for kind, i, j in _runs(types):
            if kind == TEXT:
                pieces.append(torch.arange(j - i).expand(3, -1) + pos)
                pos += j - i
                continue
            if item >= len(grids):
                raise ValueError(
                    f"sample {row} has more image / video placeholder runs than visual grid rows ({len(grids)})"
                )
            grid = grids[item]
            ids = image_position_ids(pos, grid, spatial_merge_size, intervals[item])
            item += 1
            if ids.shape[1] != j - i:
                raise ValueError(
                    f"sample {row}: an {'image' if kind == IMAGE else 'video'} placeholder run has {j - i} tokens "
                    f"but its grid {tuple(int(g) for g in grid)} needs {ids.shape[1]} (merge size "
                    f"{spatial_merge_size})"
                )
            pieces.append(ids)
            pos += max(int(grid[1]), int(grid[2])) // spatial_merge_size
        if pieces:
            row_pos = torch.cat(pieces, dim=1)
            positions[:, row, valid[row]] = row_pos
            deltas[row] = int(row_pos.max()) + 1 - len(types)
    if item != len(grids):
        raise ValueError(f"{len(grids)} visual grids given but {item} image / video placeholder runs found")
    return positions, deltas


@dataclass
class VisualItems:
    """A batch's images and videos as one list in placeholder order: pixel rows [P, D], grids [items, 3],
    kinds [items] (1 image, 2 video), time_intervals [items] (float; rope spacing of the temporal axis)."""

    pixel_values: torch.Tensor | None
    grid_thw: torch.Tensor | None
    kinds: torch.Tensor
    time_intervals: torch.Tensor


def visual_items(
    token_types: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    pixel_values_videos: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    split_video_frames: bool = False,
    video_time_intervals: torch.Tensor | None = None,
) -> VisualItems:
    """Interleave a transformers-style batch's images and videos (each in its own order, as the processor
    returns them) into the items of `mrope_position_ids`, in the order their placeholder runs appear.

    token_types: mm_token_type_ids [batch, seq]. split_video_frames: Qwen3-VL, one run and one item per video
    frame. video_time_intervals [videos]: Qwen2.5-VL's tokens_per_second * second_per_grid_t per video.
    Raises ValueError when runs, grids and pixel rows disagree.
    """
    valid = (
        torch.ones_like(token_types, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    )

    def blocks(pixels, grids, split):
        """(pixel rows, grid, interval index) per item of one modality, in its own order."""
        out, row = [], 0
        for k, g in enumerate([] if grids is None else grids.tolist()):
            t, h, w = g
            for _ in range(t) if split else [None]:
                n = h * w if split else t * h * w
                out.append((row, row + n, [1, h, w] if split else [t, h, w], k))
                row += n
        if pixels is not None and row != pixels.shape[0]:
            raise ValueError(f"the grids need {row} patch rows but pixel values have {pixels.shape[0]}")
        return out

    queues = {
        IMAGE: blocks(pixel_values, image_grid_thw, False),
        VIDEO: blocks(pixel_values_videos, video_grid_thw, split_video_frames),
    }
    taken = {IMAGE: 0, VIDEO: 0}
    rows, grids, kinds, intervals = [], [], [], []
    for r in range(token_types.shape[0]):
        for kind, _, _ in _runs(token_types[r][valid[r]].tolist()):
            if kind == TEXT:
                continue
            if kind not in queues:
                raise ValueError(f"unknown mm_token_type {kind} (0 text, 1 image, 2 video)")
            if taken[kind] >= len(queues[kind]):
                name = "image" if kind == IMAGE else "video"
                raise ValueError(f"more {name} placeholder runs than {name} grids ({len(queues[kind])})")
            start, stop, grid, k = queues[kind][taken[kind]]
            taken[kind] += 1
            src = pixel_values if kind == IMAGE else pixel_values_videos
            if src is not None:
                rows.append(src[start:stop])
            grids.append(grid)
            kinds.append(kind)
            interval = 1.0
            if kind == VIDEO and video_time_intervals is not None:
                interval = float(video_time_intervals[k])
            intervals.append(interval)
    for kind, queue in queues.items():
        if taken[kind] != len(queue):
            name = "image" if kind == IMAGE else "video"
            raise ValueError(f"{len(queue)} {name} grids (frames) given but {taken[kind]} {name} runs found")
    return VisualItems(
        pixel_values=torch.cat(rows) if rows else None,
        grid_thw=torch.tensor(grids, dtype=torch.long) if grids else None,
        kinds=torch.tensor(kinds, dtype=torch.long),
        time_intervals=torch.tensor(intervals, dtype=torch.float64),
    )
