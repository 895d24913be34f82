"""Build this rank's stage of a registered model from an HF config or directory."""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from mmr1_mega.distributed.cpu import device
from mmr1_mega.models.registry import get_family


def build_model(
    hf_config, sequence_parallel: bool = False, dtype: str = "fp32", recompute: bool = False, **overrides
):
    """This rank's pipeline stage, for the TP / PP layout already set up in megatron's parallel_state, with
    every parameter and buffer on this rank's device (megatron creates its TP layers there, but the HF
    vision tower, the local spec's torch norms and rotary buffers are built on the CPU, and megatron's
    DDP moves neither buffers nor, without the distributed optimizer, parameters).

    Returns (model, family). Raises UnknownModelType or ValueError (layout does not fit the model).
    """
    family = get_family(hf_config.model_type)
    config = family.transformer_config(
        hf_config,
        tensor_parallel=ps.get_tensor_model_parallel_world_size(),
        pipeline_parallel=ps.get_pipeline_model_parallel_world_size(),
        sequence_parallel=sequence_parallel,
        dtype=dtype,
        recompute=recompute,
        **overrides,
    )
    model = family.build(
        config,
        hf_config,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )
    here = device()
    model.to(here)
    stray = tensors_off_device(model, here)
    if stray:
        raise RuntimeError(f"after moving the model to {here}, these stayed elsewhere: {stray[:5]}")
    return model, family


def tensors_off_device(module: torch.nn.Module, here: torch.device) -> list[str]:
    """Names (with their device) of the parameters and buffers of `module` that are not on `here`."""
    return [
        f"{name} ({t.device})"
        for name, t in [*module.named_parameters(), *module.named_buffers()]
        if t.device.type != here.type or (here.index is not None and t.device.index != here.index)
    ]
