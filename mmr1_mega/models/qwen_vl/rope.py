"""3-D multimodal rope positions (mrope) for Qwen2-VL / Qwen2.5-VL, as transformers computes them.

Text tokens advance all three axes (temporal, height, width) together by one. An image of LLM grid
(t, h, w) = (grid_t, grid_h / merge, grid_w / merge) starting at position p gets temporal p + [0, t),
height p + [0, h), width p + [0, w) on its grid; the text after it continues at p + max(h, w)
(transformers 5.x, Qwen2_5_VLModel.get_rope_index, images only). Padding positions are 0.
"""

from __future__ import annotations

import torch


def image_position_ids(start: int, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Positions [3, t*h*w] of one image's LLM tokens starting at `start`."""
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt, hh, ww]).reshape(3, -1) + start


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_token_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    spatial_merge_size: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D positions for a batch.

    input_ids, image_token_mask (bool, True on image placeholder tokens), attention_mask (1 = real token):
    [batch, seq]. image_grid_thw: [num_images, 3], the images in the order their placeholders appear in the
    batch (row by row). Returns (position_ids [3, batch, seq] int64, rope_deltas [batch]: max position + 1
    - number of real tokens, which generation adds to text positions after the prompt).
    Raises ValueError when placeholder runs and image grids disagree.
    """
    b, s = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    valid = attention_mask.bool()
    image_token_mask = image_token_mask.bool() & valid
    positions = torch.zeros(3, b, s, dtype=torch.long)
    deltas = torch.zeros(b, dtype=torch.long)
    grids = list(image_grid_thw) if image_grid_thw is not None else []
    next_image = 0
    for row in range(b):
        is_image = image_token_mask[row][valid[row]].tolist()
        pieces, pos, i, n = [], 0, 0, len(is_image)
        while i < n:
            j = i
            while j < n and is_image[j] == is_image[i]:
                j += 1
            if not is_image[i]:
                pieces.append(torch.arange(j - i).expand(3, -1) + pos)
                pos += j - i
            else:
                if next_image >= len(grids):
                    raise ValueError(
                        f"sample {row} has more image placeholder runs than image_grid_thw rows ({len(grids)})"
                    )
                grid = grids[next_image]
                next_image += 1
                ids = image_position_ids(pos, grid, spatial_merge_size)
                if ids.shape[1] != j - i:
                    raise ValueError(
                        f"sample {row}: an image placeholder run has {j - i} tokens but its grid "
                        f"{tuple(int(g) for g in grid)} needs {ids.shape[1]} (merge size {spatial_merge_size})"
                    )
                pieces.append(ids)
                pos += max(int(grid[1]), int(grid[2])) // spatial_merge_size
            i = j
        if pieces:
            row_pos = torch.cat(pieces, dim=1)
            positions[:, row, valid[row]] = row_pos
            deltas[row] = int(row_pos.max()) + 1 - n
    if next_image != len(grids):
        raise ValueError(f"{len(grids)} image grids given but {next_image} image placeholder runs found")
    return positions, deltas
