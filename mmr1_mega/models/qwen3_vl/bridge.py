"""Qwen3-VL (dense): HF config -> megatron TransformerConfig, the weight-mapping table, the builder.

The language model differs from Qwen2.5-VL's by per-head q / k RMSNorm (megatron-core's qk_layernorm; the
norm weight is shared by the heads, so megatron's finalize_model_grads sums its gradient over TP), no qkv
bias, an explicit head_dim (kv_channels) and interleaved mrope (model.py); the rest is qwen_vl.bridge's.
"""

from __future__ import annotations

from mmr1_mega.models.mapping import Mapping, Replicated, WeightTable
from mmr1_mega.models.qwen_vl import bridge as qwen2
from mmr1_mega.models.registry import ModelFamily, register

# transformers' default when the config has none (Qwen3VLTextRotaryEmbedding)
QWEN3_MROPE_SECTION = [24, 20, 20]


def transformer_config(hf_config, *args, **kwargs):
    """qwen_vl.bridge.transformer_config with Qwen3's attention: q / k norm, no qkv bias."""
    text = hf_config.text_config
    section = list(text.rope_parameters.get("mrope_section") or QWEN3_MROPE_SECTION)
    kwargs = {"add_qkv_bias": False, "qk_layernorm": True, "mrope_section": section, **kwargs}
    return qwen2.transformer_config(hf_config, *args, **kwargs)


def weight_table(hf_config) -> list[Mapping]:
    """Qwen2.5-VL's table without the qkv bias, with the per-head q / k norms (on-disk names)."""
    attn = "model.layers.{layer}.self_attn."
    layer = "language_model.decoder.layers.{layer}.self_attention."
    rows = [m for m in qwen2.weight_table(hf_config) if not m.megatron.endswith("linear_qkv.bias")]
    rows += [
        Mapping(layer + "q_layernorm.weight", (attn + "q_norm.weight",), Replicated()),
        Mapping(layer + "k_layernorm.weight", (attn + "k_norm.weight",), Replicated()),
    ]
    return WeightTable(rows, released_name)


def released_name(name: str) -> str:
    """The name Qwen3-VL checkpoints use for an on-disk (hf_io.canonical_name) name."""
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    if name.startswith("visual."):
        return "model." + name
    return name


def _build(config, hf_config, pre_process=True, post_process=True):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    from mmr1_mega.models.qwen3_vl.model import Qwen3VLModel

    return Qwen3VLModel(config, hf_config, Qwen3VLVisionModel, pre_process, post_process)


def _qwen3_vl_class():
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration


register(ModelFamily("qwen3_vl", _qwen3_vl_class, transformer_config, weight_table, _build))
