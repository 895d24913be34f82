"""The one place that chooses the megatron-core layer spec: transformer-engine when usable, else local."""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from mmr1_mega.distributed.cpu import cuda_absent


class TorchNorm:
    """torch RMSNorm / LayerNorm for the local spec, usable with sequence parallelism.

    megatron-core's WrappedTorchNorm (transformer/torch_norm.py: 0.16.1 line 32, 0.19.2 line 50) refuses sequence_parallel. With SP
    each TP rank normalises its own slice of the sequence, so the norm weight gets a partial gradient;
    tagging it `sequence_parallel=True` makes megatron's finalize_model_grads all-reduce it across TP,
    which is exactly what TE / apex norms do.
    """

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_unused):
        if config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps)
        elif config.normalization == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps)
        else:
            raise ValueError(f"normalization {config.normalization!r} is not supported by the local spec")
        for p in norm.parameters():
            p.sequence_parallel = config.sequence_parallel
        return norm


def transformer_engine_usable() -> bool:
    """True when transformer-engine imports and CUDA is present."""
    if cuda_absent():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken TE install is the same as none
        return False
    return True


def implementations() -> dict[str, str]:
    """What runs here, as megatron-core chooses it: the layer spec (transformer-engine's fused linears and
    norms, or the local spec with torch norms) and the Adam class megatron's optimizer uses (TE's
    FusedAdam, apex's FusedAdam, or torch's AdamW, in megatron-core's own order of preference)."""
    from megatron.core import optimizer as megatron_optimizer

    te = transformer_engine_usable()
    adam = megatron_optimizer.Adam
    return {
        "layer_spec": "transformer-engine" if te else "local",
        "norm": "transformer-engine (fused into the linears)" if te else "torch (mmr1_mega TorchNorm)",
        "adam": f"{adam.__module__}.{adam.__qualname__}",
    }


def decoder_block_spec(
    config: TransformerConfig,
    num_layers_here: int,
    use_te: bool | None = None,
    layer_module: type | None = None,
    layer_params: dict | None = None,
):
    """Spec for the decoder layers of this pipeline stage (Qwen2-style: RMSNorm, SwiGLU, qkv bias; Qwen3-style
    per-head q / k RMSNorm when config.qk_layernorm).

    use_te: None chooses transformer-engine when usable. layer_module / layer_params: a TransformerLayer
    subclass to build instead, with these extra constructor arguments (Qwen3-VL's DeepStack layers).
    Returns TransformerBlockSubmodules.
    """
    from megatron.core.models.gpt import gpt_layer_specs

    if use_te is None:
        use_te = transformer_engine_usable()
    qk = bool(config.qk_layernorm)
    if use_te:
        layer = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk)
        from megatron.core.extensions.transformer_engine import TENorm

        final_norm = TENorm
    else:
        layer = gpt_layer_specs.get_gpt_layer_local_spec(normalization=config.normalization, qk_layernorm=qk)
        sub = dataclasses.replace(layer.submodules, input_layernorm=TorchNorm, pre_mlp_layernorm=TorchNorm)
        if qk:  # megatron's local q / k norm refuses sequence parallelism: ours (per head, summed over TP)
            attention = layer.submodules.self_attention
            attention = dataclasses.replace(
                attention,
                submodules=dataclasses.replace(
                    attention.submodules, q_layernorm=TorchNorm, k_layernorm=TorchNorm
                ),
            )
            sub = dataclasses.replace(sub, self_attention=attention)
        layer = dataclasses.replace(layer, submodules=sub)
        final_norm = TorchNorm
    if layer_module is not None:
        layer = dataclasses.replace(
            layer, module=layer_module, params={**layer.params, **(layer_params or {})}
        )
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers_here, layer_norm=final_norm)
