"""Qwen2-VL and Qwen2.5-VL: HF config -> megatron TransformerConfig, the weight-mapping table, builders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from mmr1_mega.models.mapping import ColumnParallel, FusedQKV, GatedMLP, Mapping, Replicated, RowParallel
from mmr1_mega.models.registry import ModelFamily, register

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def text_head_dim(text) -> int:
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def mrope_section(text) -> list[int]:
    # transformers' default when the config has none (Qwen2_5_VLRotaryEmbedding)
    return list(text.rope_parameters.get("mrope_section") or [16, 24, 24])


def transformer_config(
    hf_config,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    sequence_parallel: bool = False,
    dtype: str = "fp32",
    recompute: bool = False,
    **overrides,
) -> TransformerConfig:
    """megatron TransformerConfig equivalent to the HF text model (Qwen2: RMSNorm, SwiGLU, qkv bias).

    Raises ValueError for layouts the model cannot take (heads / query groups / layers not divisible).
    """
    text = hf_config.text_config
    check_layout(hf_config, tensor_parallel, pipeline_parallel, sequence_parallel)
    torch_dtype = DTYPES[dtype]
    kwargs = dict(
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        ffn_hidden_size=text.intermediate_size,
        num_attention_heads=text.num_attention_heads,
        num_query_groups=text.num_key_value_heads,
        kv_channels=text_head_dim(text),
        normalization="RMSNorm",
        layernorm_epsilon=text.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention_softmax_in_fp32=True,
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        mrope_section=mrope_section(text),
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        sequence_parallel=sequence_parallel and tensor_parallel > 1,
        params_dtype=torch_dtype,
        pipeline_dtype=torch_dtype,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        variable_seq_lengths=True,  # rollouts differ in length from batch to batch (PP shape exchange)
        moe_token_dispatcher_type="alltoall",  # unused (dense) but megatron rejects the default with the above
        # megatron tags TP weights (tensor_model_parallel, partition_dim) only while initialising them
        perform_initialization=True,
        recompute_granularity="full" if recompute else None,
        recompute_method="uniform" if recompute else None,
        recompute_num_layers=1 if recompute else None,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def check_layout(hf_config, tensor_parallel: int, pipeline_parallel: int, sequence_parallel: bool) -> None:
    """Raise ValueError, naming the numbers, when a TP / PP layout does not divide the model."""
    text = hf_config.text_config
    problems = []
    if tensor_parallel < 1 or pipeline_parallel < 1:
        problems.append("tensor_parallel and pipeline_parallel must be >= 1")
    else:
        if text.num_attention_heads % tensor_parallel:
            problems.append(
                f"attention heads ({text.num_attention_heads}) % tensor_parallel ({tensor_parallel}) != 0"
            )
        if text.num_key_value_heads % tensor_parallel:
            problems.append(
                f"query groups / kv heads ({text.num_key_value_heads}) % tensor_parallel ({tensor_parallel}) != 0"
            )
        if text.intermediate_size % tensor_parallel:
            problems.append(
                f"intermediate_size ({text.intermediate_size}) % tensor_parallel ({tensor_parallel}) != 0"
            )
        if text.vocab_size % tensor_parallel:
            problems.append(f"vocab_size ({text.vocab_size}) % tensor_parallel ({tensor_parallel}) != 0")
        if text.num_hidden_layers % pipeline_parallel:
            problems.append(
                f"layers ({text.num_hidden_layers}) % pipeline_parallel ({pipeline_parallel}) != 0"
            )
    if sequence_parallel and tensor_parallel == 1:
        problems.append("sequence_parallel needs tensor_parallel > 1")
    if problems:
        raise ValueError("parallel layout does not fit the model: " + "; ".join(problems))


def weight_table(hf_config) -> list[Mapping]:
    """HF (on-disk names, as transformers saves them) <-> megatron names of one stage's QwenVLModel.

    One table for both layer specs: with transformer-engine the pre-attention and pre-MLP norms are fused
    into the following linear layers (`linear_qkv.layer_norm_weight`, `linear_fc1.layer_norm_weight`; the
    separate norms are IdentityOps), with the local spec they are `input_layernorm` / `pre_mlp_layernorm`.
    Each norm has a row per spec; a model has the parameters of exactly one of them.
    """
    text = hf_config.text_config
    qkv = FusedQKV(text.num_attention_heads, text.num_key_value_heads, text_head_dim(text))
    attn, mlp = "model.layers.{layer}.self_attn.", "model.layers.{layer}.mlp."
    layer = "language_model.decoder.layers.{layer}."
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    return [
        Mapping("vision.{rest}", ("visual.{rest}",), Replicated()),
        Mapping(
            "language_model.embedding.word_embeddings.weight",
            ("model.embed_tokens.weight",),
            ColumnParallel(),
        ),
        Mapping(
            layer + "input_layernorm.weight", ("model.layers.{layer}.input_layernorm.weight",), Replicated()
        ),
        Mapping(  # transformer-engine spec: the same norm, fused into TELayerNormColumnParallelLinear
            layer + "self_attention.linear_qkv.layer_norm_weight",
            ("model.layers.{layer}.input_layernorm.weight",),
            Replicated(),
        ),
        Mapping(
            layer + "self_attention.linear_qkv.weight",
            (attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"),
            qkv,
        ),
        Mapping(
            layer + "self_attention.linear_qkv.bias",
            (attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"),
            qkv,
        ),
        Mapping(layer + "self_attention.linear_proj.weight", (attn + "o_proj.weight",), RowParallel()),
        Mapping(
            layer + "pre_mlp_layernorm.weight",
            ("model.layers.{layer}.post_attention_layernorm.weight",),
            Replicated(),
        ),
        Mapping(  # transformer-engine spec
            layer + "mlp.linear_fc1.layer_norm_weight",
            ("model.layers.{layer}.post_attention_layernorm.weight",),
            Replicated(),
        ),
        Mapping(
            layer + "mlp.linear_fc1.weight", (mlp + "gate_proj.weight", mlp + "up_proj.weight"), GatedMLP()
        ),
        Mapping(layer + "mlp.linear_fc2.weight", (mlp + "down_proj.weight",), RowParallel()),
        Mapping("language_model.decoder.final_layernorm.weight", ("model.norm.weight",), Replicated()),
        Mapping(
            "language_model.output_layer.weight",
            ("model.embed_tokens.weight",) if tied else ("lm_head.weight",),
            ColumnParallel(),
        ),
    ]


def _build(vision_class_getter):
    def build(config, hf_config, pre_process=True, post_process=True):
        from mmr1_mega.models.qwen_vl.model import QwenVLModel

        return QwenVLModel(config, hf_config, vision_class_getter(), pre_process, post_process)

    return build


def _qwen2_5_vl_class():
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration


def _qwen2_5_vision():
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    return Qwen2_5_VisionTransformerPretrainedModel


def _qwen2_vl_class():
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration


def _qwen2_vision():
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    return Qwen2VisionTransformerPretrainedModel


register(
    ModelFamily("qwen2_5_vl", _qwen2_5_vl_class, transformer_config, weight_table, _build(_qwen2_5_vision))
)
register(ModelFamily("qwen2_vl", _qwen2_vl_class, transformer_config, weight_table, _build(_qwen2_vision)))
