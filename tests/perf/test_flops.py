"""The model FLOPs formulas (mmr1_mega.perf.flops) against torch's FlopCounterMode on transformers' models.

FlopCounterMode counts the shapes of the matmul / bmm / conv calls a forward pass makes, whatever the
weights: the models are built with random or uninitialised weights, the attention is transformers' eager
implementation (explicit matmuls: the counter has no formula for CPU SDPA kernels). Where the counter and
the formulas count the same thing the comparison is exact:

- vision tower: every matmul, the conv patch embedding and the attention of every block; transformers
  runs each frame (full-attention blocks) or each window (window-attention blocks) as its own attention
  call, so the counter sees exactly the pairs the formula counts;
- language model on a padded batch [B, S]: the weight matmuls of all B x S positions, and a dense S x S
  score matrix per row (the causal mask is added to it, nothing is skipped): lm_attention_flops with
  causal=False over B sequences of length S;
- the causal count itself: a decode with a KV cache, one token at a time, makes query i attend to keys
  0..i, exactly the pairs key <= query; its counter total equals lm_forward_flops.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmr1_mega.models.presets import qwen2_5_vl_config
from mmr1_mega.models.tiny import tiny_hf_config, tiny_vl_batch
from mmr1_mega.perf.flops import (
    batch_forward_flops,
    lm_attention_flops,
    lm_forward_flops,
    lm_params_matmul,
    mfu,
    step_flops,
    vision_forward_flops,
    vision_window_lengths,
)

mm, addmm, bmm, conv = (
    torch.ops.aten.mm,
    torch.ops.aten.addmm,
    torch.ops.aten.bmm,
    torch.ops.aten.convolution,
)


def qwen2_vl_real_width_config(num_layers: int = 1, vision_depth: int = 2):
    """Qwen2-VL-2B-Instruct's widths (its config.json) cut to a few layers: a real-width Qwen2-VL tower
    (embed_dim 1280, mlp_ratio 4, fc1 / fc2 MLP) for the test."""
    from transformers import Qwen2VLConfig

    text = dict(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=num_layers,
        num_attention_heads=12,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        tie_word_embeddings=True,
    )
    vision = dict(
        depth=vision_depth,
        embed_dim=1280,
        hidden_size=1536,
        mlp_ratio=4,
        num_heads=16,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    tokens = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652)
    return Qwen2VLConfig(text_config=text, vision_config=vision, vision_end_token_id=151653, **tokens)


CONFIGS = {
    "tiny-qwen2.5-vl": lambda: tiny_hf_config("qwen2_5_vl"),
    "tiny-qwen2.5-vl-tied": lambda: tiny_hf_config("qwen2_5_vl", tie_word_embeddings=True, vision_depth=3),
    "tiny-qwen2-vl": lambda: tiny_hf_config("qwen2_vl"),
    "tiny-qwen3-vl": lambda: tiny_hf_config("qwen3_vl"),
    "3b-1-layer": lambda: qwen2_5_vl_config("3b", num_layers=1, vision_depth=2),
    "qwen2-vl-2b-1-layer": lambda: qwen2_vl_real_width_config(),
}
# image grids (t, h, w) in patches: partial windows at the bottom and right edges (12 x 10 patches are 6 x 5
# merged tokens: windows of 4 and 2 rows, 4 and 1 columns in the 3b tower, 2-wide windows in the tiny one),
# a grid that is an exact multiple of the window, a small one, and a two-frame video
GRIDS = [(1, 12, 10), (1, 8, 8), (1, 4, 6), (2, 4, 6)]


def build(cfg, part: str = "model"):
    """The transformers model (or its vision tower) of cfg with eager attention and uninitialised weights
    (FLOP counts depend on shapes only; skipping the init keeps the real-width models fast to build)."""
    from transformers.initialization import no_init_weights

    from mmr1_mega.models.registry import get_family

    cfg._attn_implementation = "eager"
    with no_init_weights():
        model = get_family(cfg.model_type).hf_class()(cfg).eval()
    return model.model.visual if part == "visual" else model


def counted(fn) -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return counter


def pixels(cfg, grids) -> torch.Tensor:
    v = cfg.vision_config
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, v.in_channels * v.temporal_patch_size * v.patch_size**2)


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "3b-1-layer"])
def test_window_partition_is_transformers_one(name):
    from transformers.vision_utils import get_vision_window_index

    v = CONFIGS[name]().vision_config
    grids = GRIDS + [(1, 2, 2), (1, 16, 6), (3, 10, 14)]
    _, cu = get_vision_window_index(torch.tensor(grids), v.spatial_merge_size, v.window_size, v.patch_size)
    ours = [n for g in grids for n in vision_window_lengths(v, g)]
    assert ours == torch.diff(cu).tolist()
    # an edge case by hand: the 3b tower's windows are 4 x 4 merged tokens (112 / 14 / 2); 12 x 10 patches
    # are 6 x 5 merged tokens: windows of 4 x 4, 4 x 1, 2 x 4, 2 x 1 merged tokens, 4 patches each
    if name == "3b-1-layer":
        assert vision_window_lengths(v, (1, 12, 10)) == [64, 16, 32, 8]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vision_tower_flops_equal_flop_counter(name):
    cfg = CONFIGS[name]()
    visual = build(cfg, "visual")
    counter = counted(lambda: visual(pixels(cfg, GRIDS), grid_thw=torch.tensor(GRIDS)))
    counts = counter.get_flop_counts()["Global"]
    assert set(counts) <= {mm, addmm, bmm, conv}  # nothing but matmuls, conv and attention products
    assert counter.get_total_flops() == vision_forward_flops(cfg.vision_config, GRIDS)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_whole_model_forward_flops_equal_flop_counter(name):
    """A padded batch with images through the whole model: vision tower, LM weights over the padded
    positions, LM attention as dense S x S per row; together they are all the counter sees."""
    cfg = CONFIGS[name]()
    model = build(cfg)
    grids = GRIDS[:3]
    batch = tiny_vl_batch(cfg, image_grids=grids)
    batch["pixel_values"] = pixels(cfg, grids)
    B, S = batch["input_ids"].shape
    counts = counted(lambda: model(**batch)).get_flop_counts()
    prefix = type(model).__name__
    lm = counts[f"{prefix}.model.language_model"]
    head = counts[f"{prefix}.lm_head"]
    vision = sum(counts[f"{prefix}.model.visual"].values())

    assert vision == vision_forward_flops(cfg.vision_config, grids)
    lm_weights = lm[mm] + lm.get(addmm, 0) + head[mm]  # addmm: the linears with a bias (Qwen2 qkv)
    assert lm_weights == 2 * lm_params_matmul(cfg.text_config) * B * S
    assert lm[bmm] == lm_attention_flops(cfg.text_config, [S] * B, causal=False)
    assert sum(counts["Global"].values()) == vision + lm_weights + lm[bmm]


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen2-vl", "tiny-qwen3-vl", "3b-1-layer"])
def test_causal_lm_flops_equal_flop_counter_of_kv_cache_decode(name):
    """lm_forward_flops (causal pairs, several sequences) = the counter's total of decoding each sequence
    token by token with a KV cache, where query i meets exactly keys 0..i."""
    from transformers import DynamicCache

    cfg = CONFIGS[name]()
    model = build(cfg)
    lengths = [5, 1, 8]
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(8, 100, (1, n), generator=g) for n in lengths]

    def decode():
        for ids in seqs:
            cache = DynamicCache(config=cfg)
            for i in range(ids.shape[1]):
                model(input_ids=ids[:, i : i + 1], cache=cache, use_cache=True)

    assert counted(decode).get_total_flops() == lm_forward_flops(cfg.text_config, lengths)


def test_kv_cache_decode_is_the_causal_forward():
    """The decode the test above counts computes the same logits as one causal forward pass (so it is the
    same model computation, only split by query)."""
    from transformers import DynamicCache

    cfg = tiny_hf_config("qwen2_5_vl")
    torch.manual_seed(0)
    model = build(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(8, 100, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        cache = DynamicCache(config=cfg)
        steps = [model(input_ids=ids[:, i : i + 1], cache=cache, use_cache=True).logits for i in range(7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_lm_formula_by_hand():
    """The 3b LM written out: per layer q 2048^2, k and v 2048 x 256 each (2 kv heads of 128), o 2048^2,
    MLP 3 x 2048 x 11008; lm_head 2048 x 151936; attention 4 x 128 x 16 FLOPs per causal pair."""
    c = qwen2_5_vl_config("3b", num_layers=2).text_config
    per_layer = 2048 * 2048 + 2 * 2048 * 256 + 2048 * 2048 + 3 * 2048 * 11008
    assert lm_params_matmul(c) == 2 * per_layer + 2048 * 151936
    pairs = 1 + 3 + 6  # lengths 1, 2, 3: L (L + 1) / 2 each
    assert lm_attention_flops(c, [1, 2, 3]) == 2 * 4 * 128 * 16 * pairs
    assert lm_attention_flops(c, [1, 2, 3], causal=False) == 2 * 4 * 128 * 16 * (1 + 4 + 9)
    assert lm_forward_flops(c, [1, 2, 3]) == 2 * lm_params_matmul(c) * 6 + 2 * 4 * 128 * 16 * pairs
    assert lm_forward_flops(c, []) == 0.0
    # the full 36-layer model: about 3.09e9 matmul weights (Qwen2.5-VL-3B's LM with its tied lm_head)
    assert round(lm_params_matmul(qwen2_5_vl_config("3b").text_config) / 1e9, 2) == 3.09


def test_step_flops_and_batch_forward_flops():
    cfg = tiny_hf_config("qwen2_5_vl")
    lengths, grids = [10, 25, 7], [(1, 4, 4), (1, 4, 6)]
    lm = lm_forward_flops(cfg.text_config, lengths)
    vision = vision_forward_flops(cfg.vision_config, grids)
    out = step_flops(cfg, lengths, grids, forward_passes=2, train_passes=1)
    assert out == {"lm_forward": lm, "vision_forward": vision, "total": 2 * (lm + vision) + 3 * (lm + vision)}
    assert step_flops(cfg, lengths, [], 1, 0)["vision_forward"] == 0.0

    class Batch:  # what batch_forward_flops reads of an actor batch
        attention_mask = torch.tensor([[1] * 10 + [0] * 15, [1] * 25, [1] * 7 + [0] * 18])
        image_grid_thw = torch.tensor(grids)

        @property
        def lengths(self):
            return self.attention_mask.sum(1).tolist()

    assert batch_forward_flops(cfg, Batch()) == lm + vision
    Batch.image_grid_thw = None
    assert batch_forward_flops(cfg, Batch()) == lm


def test_mfu():
    assert mfu(1e15, 2.0, 1e15, 4) == 0.125
    with pytest.raises(ValueError):
        mfu(1e15, 0.0, 1e15, 1)
