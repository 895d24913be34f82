"""Model registry keyed by Hugging Face `model_type`: each family registers one ModelFamily."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFamily:
    """Everything the project needs to know about one HF model family.

    hf_class: the transformers class that loads / generates (export checks, local engine).
    transformer_config: (hf_config, tp, pp, sp, dtype) -> megatron TransformerConfig.
    weight_table: hf_config -> list of models.mapping.Mapping rows.
    build: (transformer_config, hf_config, pre_process, post_process) -> the megatron module of one stage.
    """

    model_type: str
    hf_class: Callable[[], type]
    transformer_config: Callable[..., Any]
    weight_table: Callable[[Any], list]
    build: Callable[..., Any]


_FAMILIES: dict[str, ModelFamily] = {}


class UnknownModelType(ValueError):
    """The HF config names a model_type no family is registered for."""


def register(family: ModelFamily) -> ModelFamily:
    """Add a family (one call per model_type)."""
    if family.model_type in _FAMILIES:
        raise ValueError(f"model_type {family.model_type!r} is registered twice")
    _FAMILIES[family.model_type] = family
    return family


def get_family(model_type: str) -> ModelFamily:
    """The family for an HF model_type; raises UnknownModelType listing the supported ones."""
    import mmr1_mega.models.qwen3_vl.bridge  # noqa: F401 - registers Qwen3-VL
    import mmr1_mega.models.qwen_vl  # noqa: F401 - registers the Qwen-VL families

    try:
        return _FAMILIES[model_type]
    except KeyError:
        raise UnknownModelType(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(_FAMILIES))}"
        ) from None


def supported_model_types() -> list[str]:
    import mmr1_mega.models.qwen3_vl.bridge  # noqa: F401
    import mmr1_mega.models.qwen_vl  # noqa: F401

    return sorted(_FAMILIES)
