"""Tiny random Qwen-VL models made with transformers (tests, the CPU demo, smoke runs)."""

from __future__ import annotations

import os

import torch

SPECIAL_TOKENS = {
    "image_token_id": 5,
    "video_token_id": 6,
    "vision_start_token_id": 3,
    "vision_end_token_id": 4,
}


def tiny_hf_config(
    model_type: str = "qwen2_5_vl",
    vocab_size: int = 128,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    vision_depth: int = 2,
    vision_hidden: int = 32,
    special_tokens: dict | None = None,
):
    """A small Qwen2-VL / Qwen2.5-VL config: every architectural feature (GQA, qkv bias, mrope, window
    attention in the Qwen2.5 vision tower, tied or untied embeddings) at toy sizes."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    head_dim = hidden_size // num_heads
    # mrope sections split head_dim / 2 rotary frequencies over (t, h, w)
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    tokens = dict(SPECIAL_TOKENS if special_tokens is None else special_tokens)
    if model_type == "qwen2_5_vl":
        vision = dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[vision_depth - 1],
        )
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    elif model_type == "qwen2_vl":
        vision = dict(
            depth=vision_depth,
            embed_dim=vision_hidden,
            hidden_size=hidden_size,
            mlp_ratio=2,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        cfg = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    elif model_type == "qwen3_vl":
        from transformers import Qwen3VLConfig

        # an explicit head_dim unlike hidden / heads (Qwen3's q_proj widens), interleaved mrope sections of it
        head_dim = 2 * hidden_size // num_heads
        half = head_dim // 2
        text.update(
            head_dim=head_dim,
            attention_bias=False,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [half - 2 * (half // 3), half // 3, half // 3],
                "mrope_interleaved": True,
            },
        )
        vision = dict(
            depth=vision_depth + 2,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=144,
            # a tap after each block but the last: vision_depth + 1 DeepStack layers, one more than half of the
            # default 4 decoder layers, so that PP2 puts one on the second stage
            deepstack_visual_indexes=list(range(vision_depth + 1)),
        )
        cfg = Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    else:
        raise ValueError(f"no tiny config for model_type {model_type!r}")
    cfg.tie_word_embeddings = tie_word_embeddings
    return cfg


def save_tiny_model(out_dir: str | os.PathLike, seed: int = 0, **config_kwargs):
    """Create a tiny random model with transformers (fp32) and save_pretrained it. Returns the HF model."""
    from mmr1_mega.models.registry import get_family

    cfg = tiny_hf_config(**config_kwargs)
    torch.manual_seed(seed)
    model = get_family(cfg.model_type).hf_class()(cfg).eval()
    # transformers zero-initialises some biases; random values make the tests see every weight
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(out_dir)
    return model


def tiny_vl_batch(
    hf_config,
    seed: int = 0,
    image_grids=((1, 4, 4), (1, 4, 6), (1, 6, 4)),
    video_grids=(),
    seconds_per_grid: float = 1.0,
) -> dict:
    """A right-padded batch: text only; text + two images of different sizes + text; one image + text; and,
    for each of `video_grids`, text + that video + text. Random pixel values (already patchified, as the image
    and video processors return them).

    Videos are laid out as each family's processor writes them: Qwen2-VL / Qwen2.5-VL one run of
    t*h*w/merge**2 video tokens between vision_start and vision_end; Qwen3-VL one run per frame, each after
    its timestamp text (here two random text tokens standing in for "<0.5 seconds>"'s).

    Returns input_ids, attention_mask, mm_token_type_ids (1 image, 2 video) [b, s], pixel_values
    [patches, C*T*P*P], image_grid_thw [num_images, 3]; with videos also pixel_values_videos,
    video_grid_thw [num_videos, 3] and, for Qwen2.5-VL, second_per_grid_ts [num_videos].
    """
    g = torch.Generator().manual_seed(seed)
    v = hf_config.vision_config
    merge = v.spatial_merge_size
    text_vocab = hf_config.text_config.vocab_size
    reserved = 8  # ids < 8 are special tokens in the tiny configs

    def text(n):
        return torch.randint(reserved, text_vocab, (n,), generator=g).tolist()

    def visual(token, n):
        return [hf_config.vision_start_token_id] + [token] * n + [hf_config.vision_end_token_id]

    def image(grid):
        return visual(hf_config.image_token_id, grid[0] * grid[1] * grid[2] // merge**2)

    def video(grid):
        t, h, w = grid
        if hf_config.model_type == "qwen3_vl":
            return sum((text(2) + visual(hf_config.video_token_id, h * w // merge**2) for _ in range(t)), [])
        return visual(hf_config.video_token_id, t * h * w // merge**2)

    grids = [list(x) for x in image_grids]
    vgrids = [list(x) for x in video_grids]
    samples = [
        text(11),
        text(3) + image(grids[0]) + text(4) + image(grids[1]) + text(5),
        image(grids[2]) + text(7),
    ] + [text(2) + video(vg) + text(3) for vg in vgrids]
    seq = max(len(s) for s in samples)
    seq += seq % 2  # even, so that sequence parallelism at TP2 can split it
    input_ids = torch.zeros(len(samples), seq, dtype=torch.long)
    attention_mask = torch.zeros(len(samples), seq, dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention_mask[i, : len(s)] = 1
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
    n_patches = sum(t * h * w for t, h, w in grids)
    types = (input_ids == hf_config.image_token_id).long() + 2 * (
        input_ids == hf_config.video_token_id
    ).long()
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": types * attention_mask,
        "pixel_values": torch.randn(n_patches, patch_dim, generator=g),
        "image_grid_thw": torch.tensor(grids, dtype=torch.long),
    }
    if vgrids:
        n_video = sum(t * h * w for t, h, w in vgrids)
        batch["pixel_values_videos"] = torch.randn(n_video, patch_dim, generator=g)
        batch["video_grid_thw"] = torch.tensor(vgrids, dtype=torch.long)
        if hf_config.model_type == "qwen2_5_vl":
            batch["second_per_grid_ts"] = torch.full((len(vgrids),), float(seconds_per_grid))
    return batch


def batch_visual_items(hf_config, batch: dict):
    """A transformers-style batch's images and videos as the project's visual items (models.qwen_vl.rope):
    Qwen3-VL videos one item per frame, Qwen2.5-VL videos with tokens_per_second * second_per_grid_t."""
    from mmr1_mega.models.qwen_vl.rope import visual_items

    intervals = None
    if "second_per_grid_ts" in batch:
        intervals = hf_config.vision_config.tokens_per_second * batch["second_per_grid_ts"]
    return visual_items(
        batch["mm_token_type_ids"],
        batch["attention_mask"],
        batch.get("pixel_values"),
        batch.get("image_grid_thw"),
        batch.get("pixel_values_videos"),
        batch.get("video_grid_thw"),
        split_video_frames=hf_config.model_type == "qwen3_vl",
        video_time_intervals=intervals,
    )


def batch_positions(hf_config, batch: dict, items=None):
    """3-D mrope positions and rope deltas of a transformers-style batch, from its visual items."""
    from mmr1_mega.models.qwen_vl.rope import mrope_position_ids

    items = batch_visual_items(hf_config, batch) if items is None else items
    return mrope_position_ids(
        batch["input_ids"],
        batch["mm_token_type_ids"],
        items.grid_thw,
        hf_config.vision_config.spatial_merge_size,
        batch["attention_mask"],
        items.time_intervals,
    )


def megatron_inputs(hf_config, batch: dict) -> dict:
    """The QwenVLModel forward arguments for a transformers-style batch (tiny_vl_batch's keys): token ids,
    3-D mrope positions computed from the visual items, their pixel values and grids."""
    items = batch_visual_items(hf_config, batch)
    pos, _ = batch_positions(hf_config, batch, items)
    return dict(
        input_ids=batch["input_ids"],
        position_ids=pos,
        pixel_values=items.pixel_values,
        image_grid_thw=items.grid_thw,
    )
