"""Runs inside the ranks of the Qwen3-VL tests."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from mmr1_mega.distributed.init import initialize_model_parallel  # noqa: E402


def rope_vs_transformers(head_dim: int, section: list[int], theta: float, seed: int) -> dict:
    """cos / sin of InterleavedMRoPE's angles and of transformers' Qwen3VLTextRotaryEmbedding for the same
    random 3-D positions; also megatron's own (contiguous) MultimodalRotaryEmbedding for contrast."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding
    from transformers import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    from mmr1_mega.models.qwen3_vl.rotary import InterleavedMRoPE

    initialize_model_parallel(1, 1)
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 4000, (3, 2, 37), generator=g)
    cfg = Qwen3VLTextConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": section},
    )
    ref_cos, ref_sin = Qwen3VLTextRotaryEmbedding(cfg)(torch.zeros(1, dtype=torch.float32), pos)  # [b, s, d]
    ours = InterleavedMRoPE(kv_channels=head_dim, rotary_percent=1.0, rotary_base=theta)(pos, section)
    contiguous = MultimodalRotaryEmbedding(kv_channels=head_dim, rotary_percent=1.0, rotary_base=theta)(
        pos, section
    )
    as_bsd = lambda e: e[:, :, 0].transpose(0, 1)  # noqa: E731 - [s, b, 1, d] -> [b, s, d]
    return {
        "cos": (as_bsd(ours).cos() - ref_cos).abs().max().item(),
        "sin": (as_bsd(ours).sin() - ref_sin).abs().max().item(),
        "contiguous_cos": (as_bsd(contiguous).cos() - ref_cos).abs().max().item(),
        "shape": tuple(ours.shape),
    }
