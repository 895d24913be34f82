"""Build this rank's stage of a registered model from an HF config or directory."""

from __future__ import annotations

from megatron.core import parallel_state as ps

from mmr1_mega.models.registry import get_family


def build_model(
    hf_config, sequence_parallel: bool = False, dtype: str = "fp32", recompute: bool = False, **overrides
):
    """This rank's pipeline stage, for the TP / PP layout already set up in megatron's parallel_state.

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
    return model, family
