"""mrope positions and visual-item order against transformers' get_rope_index, with images and videos."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.models.qwen_vl.rope import mrope_position_ids, visual_items
from mmr1_mega.models.registry import get_family
from mmr1_mega.models.tiny import batch_positions, batch_visual_items, tiny_hf_config, tiny_vl_batch

VIDEOS = ((3, 4, 4), (2, 6, 4))


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def family_model(request):
    cfg = tiny_hf_config(model_type=request.param)
    torch.manual_seed(0)
    return get_family(cfg.model_type).hf_class()(cfg).eval()


@pytest.mark.parametrize("seconds", [1.0, 0.5, 2.0 / 3.0])
def test_positions_equal_transformers_with_images_and_videos(family_model, seconds):
    cfg = family_model.config
    batch = tiny_vl_batch(cfg, seed=5, video_grids=VIDEOS, seconds_per_grid=seconds)
    ref_kwargs = {k: batch.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    if cfg.model_type != "qwen2_5_vl":
        ref_kwargs.pop("second_per_grid_ts")
    ref_pos, ref_deltas = family_model.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], attention_mask=batch["attention_mask"], **ref_kwargs
    )
    pos, deltas = batch_positions(cfg, batch)
    mask = batch["attention_mask"].bool()
    assert torch.equal(pos[:, mask], ref_pos[:, mask])
    assert torch.equal(deltas, ref_deltas.view(-1))
    # the video samples' temporal axis really moves (frames differ in t), so the check is not vacuous
    video_rows = batch["mm_token_type_ids"] == 2
    assert len(set(pos[0][video_rows].tolist())) > 1


def test_qwen3_vl_video_items_are_frames_in_placeholder_order():
    cfg = tiny_hf_config(model_type="qwen3_vl")
    batch = tiny_vl_batch(cfg, seed=1, video_grids=VIDEOS)
    items = batch_visual_items(cfg, batch)
    # 3 images, then 3 + 2 frames of (1, h, w)
    assert items.kinds.tolist() == [1, 1, 1, 2, 2, 2, 2, 2]
    assert items.grid_thw.tolist()[3:] == [[1, 4, 4]] * 3 + [[1, 6, 4]] * 2
    video = batch["pixel_values_videos"]
    assert torch.equal(items.pixel_values[-(3 * 16 + 2 * 24) :], video)  # frames keep the video's row order
    assert torch.equal(items.pixel_values[: 16 + 24 + 24], batch["pixel_values"])


def test_items_follow_the_placeholders_when_videos_come_first():
    # a video run before an image run in the same row: the items interleave in that order
    types = torch.tensor([[0, 2, 0, 2, 0, 1, 0]])  # two one-token frames (merge 2), then an image
    pix_img, pix_vid = torch.full((4, 2), 1.0), torch.full((8, 2), 2.0)
    items = visual_items(
        types,
        None,
        pix_img,
        torch.tensor([[1, 2, 2]]),
        pix_vid,
        torch.tensor([[2, 2, 2]]),
        split_video_frames=True,
    )
    assert items.kinds.tolist() == [2, 2, 1]
    assert items.pixel_values[:, 0].tolist() == [2.0] * 8 + [1.0] * 4
    pos, _ = mrope_position_ids(torch.zeros_like(types), types, items.grid_thw, 2)
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    # a run of two video tokens where a (1, 2, 2) frame with merge 2 has one: a clear error
    wide = torch.tensor([[0, 2, 2, 0]])
    with pytest.raises(ValueError, match="placeholder run has 2 tokens"):
        mrope_position_ids(torch.zeros_like(wide), wide, torch.tensor([[1, 2, 2]]), 2)


def test_mismatched_grids_and_runs_are_refused():
    types = torch.tensor([[0, 1, 0, 2, 0]])
    with pytest.raises(ValueError, match="more video placeholder runs"):
        visual_items(types, None, torch.zeros(4, 2), torch.tensor([[1, 2, 2]]))
    with pytest.raises(ValueError, match="2 image grids"):
        visual_items(
            types,
            None,
            torch.zeros(8, 2),
            torch.tensor([[1, 2, 2]] * 2),
            torch.zeros(4, 2),
            torch.tensor([[1, 2, 2]]),
        )
    with pytest.raises(ValueError, match="patch rows"):
        visual_items(types, None, torch.zeros(5, 2), torch.tensor([[1, 2, 2]]))


def test_actor_batch_positions_with_videos_equal_transformers(family_model):
    """build_batch (the actor's batch) from per-sample prompts with images and videos, and responses that
    contain placeholder ids as text: positions equal transformers' on the same sequences."""
    from mmr1_mega.actor.batch import build_batch

    cfg = family_model.config
    batch = tiny_vl_batch(cfg, seed=9, video_grids=VIDEOS, seconds_per_grid=0.5)
    prompts, responses, pixels, grids, intervals = [], [], [], [], []
    items = batch_visual_items(cfg, batch)
    for r in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][r].sum())
        one = {
            k: v[r : r + 1, :n]
            for k, v in batch.items()
            if k in ("input_ids", "attention_mask", "mm_token_type_ids")
        }
        # this row's images / videos: the items of the whole batch that belong to its runs
        before = sum(len(_row_items(batch, q)) for q in range(r))
        mine = range(before, before + len(_row_items(batch, r)))
        prompts.append(one["input_ids"][0].tolist())
        responses.append([cfg.video_token_id, 9, cfg.image_token_id, 10])  # placeholder ids as plain text
        grids.append(items.grid_thw[list(mine)] if len(mine) else None)
        pixels.append(None)
        intervals.append(items.time_intervals[list(mine)] if len(mine) else None)
    ours = build_batch(
        prompts,
        responses,
        pixels,
        grids,
        cfg.image_token_id,
        cfg.vision_config.spatial_merge_size,
        cfg.video_token_id,
        time_intervals=intervals,
    )
    # transformers on the same sequences: the responses' placeholder ids are text (mm type 0)
    types = ours.image_mask.long() * (1 + (ours.input_ids == cfg.video_token_id).long())
    ref_kwargs = {k: batch.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    if cfg.model_type != "qwen2_5_vl":
        ref_kwargs.pop("second_per_grid_ts")
    ref, _ = family_model.model.get_rope_index(
        ours.input_ids, types, attention_mask=ours.attention_mask, **ref_kwargs
    )
    mask = ours.attention_mask.bool()
    assert torch.equal(ours.position_ids[:, mask], ref[:, mask])
    assert int(ours.image_mask[ours.response_mask.bool()].sum()) == 0


def _row_items(batch, r):
    """The visual runs of row r (type per run)."""
    from mmr1_mega.models.qwen_vl.rope import _runs

    n = int(batch["attention_mask"][r].sum())
    return [k for k, _, _ in _runs(batch["mm_token_type_ids"][r, :n].tolist()) if k]
