"""The released Qwen2.5-VL architectures as transformers configs, built offline (no model hub).

The numbers are those of the official config.json files (Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct).
`num_layers` / `vision_depth` cut the stacks down so that a model of real width fits a test or a
benchmark on one machine; everything else (widths, heads, head_dim 128, mrope_section, vocab, special
token ids, the vision tower's window attention and full-attention blocks) is the real model's.
"""

from __future__ import annotations

# per size: hidden, intermediate, heads, kv heads, layers, vocab, tied embeddings
_TEXT = {
    "3b": (2048, 11008, 16, 2, 36, 151936, True),
    "7b": (3584, 18944, 28, 4, 28, 152064, False),
    "32b": (5120, 27648, 40, 8, 64, 152064, False),
    "72b": (8192, 29568, 64, 8, 80, 152064, False),
}
SPECIAL_TOKENS = {
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
}
VISION_DEPTH = 32
FULL_ATTENTION_EVERY = 8  # fullatt_block_indexes [7, 15, 23, 31]: every 8th block attends globally


def qwen2_5_vl_config(size: str, num_layers: int | None = None, vision_depth: int | None = None):
    """A Qwen2_5_VLConfig of the released `size` ('3b', '7b', '32b', '72b').

    num_layers: decoder layers (default: the real count). vision_depth: vision blocks (default 32); the
    full-attention blocks keep the real pattern (the last of every 8), or, for fewer than 8 blocks, every
    second block, so that window and full attention both run. Raises ValueError for an unknown size.
    """
    from transformers import Qwen2_5_VLConfig

    if size not in _TEXT:
        raise ValueError(f"unknown Qwen2.5-VL size {size!r}: choose one of {sorted(_TEXT)}")
    hidden, inter, heads, kv, layers, vocab, tied = _TEXT[size]
    depth = VISION_DEPTH if vision_depth is None else vision_depth
    every = FULL_ATTENTION_EVERY if depth >= FULL_ATTENTION_EVERY else 2
    text = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers if num_layers is None else num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        tie_word_embeddings=tied,
        hidden_act="silu",
        bos_token_id=SPECIAL_TOKENS["bos_token_id"],
        eos_token_id=SPECIAL_TOKENS["eos_token_id"],
    )
    vision = dict(
        depth=depth,
        hidden_act="silu",
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        in_channels=3,
        out_hidden_size=hidden,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[i for i in range(depth) if i % every == every - 1],
        tokens_per_second=2,
    )
    tokens = {k: v for k, v in SPECIAL_TOKENS.items() if k not in ("bos_token_id", "eos_token_id")}
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    cfg.tie_word_embeddings = tied
    return cfg


# each family's vision patch size (its processor's and its vision tower's): one merged token covers
# patch * merge pixels per side (the synthetic task's natural grid cell)
PATCH_SIZE = {"qwen2_5_vl": 14, "qwen2_vl": 14, "qwen3_vl": 16}
