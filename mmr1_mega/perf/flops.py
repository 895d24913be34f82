"""Model FLOPs of Qwen2-VL / Qwen2.5-VL (language model + vision tower), for MFU.

"Model FLOPs" as in the PaLM paper (Chowdhery et al. 2022, appendix B) and Megatron-LM's MFU: the FLOPs the
model needs whatever the implementation does, so recomputation (activation checkpointing), padding and
packing do not count. Only matrix multiplications are counted, 2 FLOPs per multiply-add:

- every weight matmul: 2 x (matmul parameters) per token (LM) or per patch / merged token (vision tower);
- attention: the scores Q K^T and the weighted sum A V, each 2 x head_dim FLOPs per head and per
  (query, key) pair that the mask lets through: causal pairs (key <= query) within each sequence in the LM,
  all pairs within a frame (full-attention blocks) or within a window (window-attention blocks) in the
  vision tower.

Not counted (small, and not matmuls): norms, softmax, rotary embeddings, biases, activations, residual
adds, the embedding lookup. A training pass (forward + backward) is 3 forward passes (the backward pass
computes the gradients of both the activations and the weights).

The architectures are those of transformers' modeling_qwen2_vl.py / modeling_qwen2_5_vl.py; the tests
check the formulas against torch.utils.flop_counter.FlopCounterMode on those models' forward passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# ---------------------------------------------------------------------------------------------- language model


def lm_head_dim(text_config) -> int:
    """Width of one attention head: the config's head_dim where it sets one (Qwen3-VL), else hidden_size //
    num_attention_heads (transformers' Qwen2(_5)_VLAttention)."""
    c = text_config
    return int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)


def lm_params_matmul(text_config) -> int:
    """Weights of the language model that multiply every token's activations: the q, k, v, o projections
    and the SwiGLU MLP of each decoder layer, and the lm_head (vocab x hidden, counted whether or not it is
    tied to the embedding: the embedding lookup is no matmul, the lm_head is). Biases are not counted."""
    c = text_config
    h = c.hidden_size
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads
    head_dim = lm_head_dim(c)
    per_layer = (
        h * heads * head_dim  # q_proj: hidden -> heads x head_dim
        + 2 * h * kv_heads * head_dim  # k_proj, v_proj: hidden -> kv_heads x head_dim each (GQA)
        + heads * head_dim * h  # o_proj: heads x head_dim -> hidden
        + 3 * h * c.intermediate_size  # SwiGLU MLP: gate_proj, up_proj (hidden -> inter), down_proj (back)
    )
    lm_head = h * c.vocab_size  # logits of every token
    return c.num_hidden_layers * per_layer + lm_head


def lm_attention_flops(text_config, seq_lengths: Sequence[int], causal: bool = True) -> float:
    """FLOPs of the attention products (Q K^T and A V) of all decoder layers over independent sequences of
    these lengths: 4 x head_dim x num_attention_heads per (query, key) pair, L (L + 1) / 2 pairs of a causal
    sequence of length L (key <= query), L^2 with causal=False (what a dense S x S kernel computes)."""
    c = text_config
    head_dim = lm_head_dim(c)
    # every query head attends on its own (GQA shares k / v between heads but not the products)
    per_pair = 2 * 2 * head_dim * c.num_attention_heads  # 2 matmuls (scores, A V) x 2 FLOPs per multiply-add
    pairs = sum(L * (L + 1) // 2 if causal else L * L for L in (int(x) for x in seq_lengths))
    return float(c.num_hidden_layers * per_pair * pairs)


def lm_forward_flops(text_config, seq_lengths: Sequence[int]) -> float:
    """Forward model FLOPs of the language model over a batch of independent causal sequences of these
    lengths (packed or padded alike: padding is not counted, packed sequences do not attend to each other):
    2 x lm_params_matmul per token + the causal attention pairs (lm_attention_flops)."""
    tokens = sum(int(x) for x in seq_lengths)
    weights = (
        2 * lm_params_matmul(text_config) * tokens
    )  # 2 FLOPs per multiply-add, every weight, every token
    return float(weights) + lm_attention_flops(text_config, seq_lengths, causal=True)


# ---------------------------------------------------------------------------------------------- vision tower


def _vision_arch(vision_config) -> dict:
    """The vision tower's widths, whichever of the two config layouts: Qwen2-VL (embed_dim = the tower's
    width, hidden_size = the LM's; fc1 / fc2 MLP of embed_dim x mlp_ratio; full attention in every block)
    or Qwen2.5-VL (hidden_size = the tower's width, out_hidden_size = the LM's; SwiGLU MLP of
    intermediate_size; window attention but in fullatt_block_indexes)."""
    v = vision_config
    model_type = getattr(v, "model_type", "")
    if model_type.startswith("qwen2_5_vl"):
        width = v.hidden_size
        return dict(
            width=width,
            out=v.out_hidden_size,
            mlp=3 * width * v.intermediate_size,  # SwiGLU: gate_proj, up_proj, down_proj
            full_blocks=set(v.fullatt_block_indexes),
            windowed=True,
        )
    if model_type.startswith("qwen3_vl"):
        width = v.hidden_size
        return dict(
            width=width,
            out=v.out_hidden_size,
            mlp=2 * width * v.intermediate_size,  # linear_fc1 (width -> intermediate), linear_fc2 (back)
            full_blocks=set(range(v.depth)),  # full attention within each frame in every block
            windowed=False,
            mergers=1 + len(v.deepstack_visual_indexes),  # the main merger + one per DeepStack tap
        )
    if model_type.startswith("qwen2_vl"):
        width = v.embed_dim
        return dict(
            width=width,
            out=v.hidden_size,
            mlp=2 * width * int(width * v.mlp_ratio),  # fc1 (width -> width x mlp_ratio), fc2 (back)
            full_blocks=set(range(v.depth)),
            windowed=False,
        )
    raise ValueError(f"no FLOPs accounting for vision config model_type {model_type!r}")


def vision_window_lengths(vision_config, grid_thw: Sequence[int]) -> list[int]:
    """Patches in each attention window of one image / video of grid (t, h, w) in a Qwen2.5-VL
    window-attention block, in transformers' order (frame, window row, window column).

    As transformers' get_vision_window_index: a window is window_size / patch_size / spatial_merge_size
    merged tokens (spatial_merge_size^2 patches each) per side, laid from the top-left corner of each
    frame; the windows at the bottom and right edges hold what is left (partial windows)."""
    v = vision_config
    m = v.spatial_merge_size
    side = v.window_size // m // v.patch_size  # window side in merged tokens
    t, h, w = (int(x) for x in grid_thw)
    rows, cols = h // m, w // m  # the frame in merged tokens

    def spans(n: int) -> list[int]:
        return [side] * (n // side) + ([n % side] if n % side else [])

    return [r * c * m * m for _ in range(t) for r in spans(rows) for c in spans(cols)]


def vision_forward_flops(vision_config, image_grid_thw: Iterable[Sequence[int]]) -> float:
    """Forward model FLOPs of the vision tower over images / videos of these (t, h, w) patch grids.

    Per patch: the patch embedding (a Conv3d whose kernel equals its stride: a matmul of the flattened
    C x T x P x P patch), and in each block qkv, proj and the MLP. Attention, non-causal, 4 x width FLOPs
    per (query, key) pair: all pairs within a frame (transformers attends over each frame of a video on its
    own, cu_seqlens of h x w patches) in full-attention blocks, all pairs within each window
    (vision_window_lengths) in Qwen2.5-VL's window-attention blocks. Then the patch merger's two linear
    layers per merged token (spatial_merge_size^2 patches concatenated)."""
    v = vision_config
    a = _vision_arch(v)
    d = a["width"]
    m2 = v.spatial_merge_size**2
    grids = [tuple(int(x) for x in g) for g in image_grid_thw]
    patches = sum(t * h * w for t, h, w in grids)
    full_pairs = sum(t * (h * w) ** 2 for t, h, w in grids)  # every frame attends within itself
    window_pairs = (
        sum(n * n for g in grids for n in vision_window_lengths(v, g)) if a["windowed"] else full_pairs
    )

    patch_embed = v.in_channels * v.temporal_patch_size * v.patch_size**2 * d  # flattened patch -> width
    block = (
        3 * d * d  # qkv: width -> 3 x width
        + d * d  # proj: width -> width
        + a["mlp"]  # the block's MLP
    )
    merger = (d * m2) * (d * m2) + (d * m2) * a["out"]  # mlp[0]: (width x m^2)^2, mlp[2]: -> the LM's width
    mergers = a.get("mergers", 1)  # Qwen3-VL: its DeepStack mergers have the main merger's shape
    weights = 2 * (patches * (patch_embed + v.depth * block) + patches // m2 * merger * mergers)

    full_blocks = len([i for i in range(v.depth) if i in a["full_blocks"]])
    # 2 matmuls (scores, A V) x 2 FLOPs per multiply-add x head_dim x heads (= width) per pair
    attention = 4 * d * (full_blocks * full_pairs + (v.depth - full_blocks) * window_pairs)
    return float(weights + attention)


# ---------------------------------------------------------------------------------------------- whole model


def step_flops(
    hf_config,
    seq_lengths: Sequence[int],
    image_grids: Iterable[Sequence[int]],
    forward_passes: int,
    train_passes: int,
) -> dict:
    """Model FLOPs of a step over one batch (sequences of these lengths holding images of these grids):
    forward_passes forward-only passes (log-probs) and train_passes training passes (forward + backward =
    3 forward passes, the vision tower included). Returns lm_forward, vision_forward (one forward pass
    each) and total."""
    lm = lm_forward_flops(hf_config.text_config, seq_lengths)
    vision = vision_forward_flops(hf_config.vision_config, image_grids)
    return {
        "lm_forward": lm,
        "vision_forward": vision,
        "total": forward_passes * (lm + vision) + train_passes * 3 * (lm + vision),
    }


def batch_forward_flops(hf_config, batch) -> float:
    """Forward model FLOPs of one pass over an actor batch (anything with `lengths`, the real length of
    each sample, and `image_grid_thw`, a [images, 3] tensor or None): LM + vision tower."""
    grids = [] if batch.image_grid_thw is None else batch.image_grid_thw.tolist()
    return lm_forward_flops(hf_config.text_config, batch.lengths) + vision_forward_flops(
        hf_config.vision_config, grids
    )


def mfu(flops: float, seconds: float, peak_flops_per_device: float, devices: int) -> float:
    """Model FLOPs utilisation: the model FLOPs done in `seconds` over what `devices` devices of this peak
    FLOP/s could do in that time."""
    if seconds <= 0 or peak_flops_per_device <= 0 or devices <= 0:
        raise ValueError(
            f"mfu needs positive seconds, peak and devices, got {seconds}, {peak_flops_per_device}, {devices}"
        )
    return flops / (seconds * peak_flops_per_device * devices)
