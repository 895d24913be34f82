"""Moving weights between HF checkpoints and a TP x PP megatron model, through the family's mapping table.

load_hf_weights: each rank reads only its own slices from the HF directory.
iter_hf_weights: each pipeline stage yields its own tensors with HF names, TP shards gathered, one tensor
at a time (streaming: the whole model is never materialised). Export and weight sync both use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from mmr1_mega.models.hf_io import HFCheckpoint, ShardedWriter, copy_assets, finalize_index
from mmr1_mega.models.mapping import Replicated, WeightMappingError, resolve


def unwrap(model) -> torch.nn.Module:
    """The QwenVLModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _skip_on_export(name: str, module) -> bool:
    # With tied embeddings a last stage that is not also first keeps its own copy of the embedding as
    # output_layer.weight; HF has a single tensor, exported by the first stage.
    return name == "language_model.output_layer.weight" and getattr(module, "tie_word_embeddings", False)


def load_hf_weights(model, checkpoint: HFCheckpoint | str | os.PathLike, table) -> list[str]:
    """Copy this rank's shard of every parameter from an HF checkpoint into `model`.

    Returns the megatron parameter names loaded. Raises WeightMappingError for a parameter no row maps,
    a tensor missing from the checkpoint, or a shape that does not fit.
    """
    ckpt = checkpoint if isinstance(checkpoint, HFCheckpoint) else HFCheckpoint(checkpoint)
    module = unwrap(model)
    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    offset = get_transformer_layer_offset(module.config)
    loaded = []
    with torch.no_grad():
        for name, param in module.named_parameters():
            row = resolve(table, name, offset)
            try:
                shapes = [ckpt.shape(n) for n in row.hf_names]
            except FileNotFoundError as e:
                raise WeightMappingError(f"{e} (needed for megatron parameter {name})") from None
            shard = row.transform.shard(ckpt.read, row.hf_names, shapes, tp_rank, tp_size)
            if tuple(shard.shape) != tuple(param.shape):
                raise WeightMappingError(
                    f"{name}: checkpoint gives shape {tuple(shard.shape)} (from {', '.join(row.hf_names)} "
                    f"{shapes}) but the model at TP={tp_size} expects {tuple(param.shape)}: does config.json "
                    "match the weights?"
                )
            param.copy_(shard)
            loaded.append(name)
    return loaded


def _gather_tp(param: torch.Tensor) -> list[torch.Tensor]:
    group = ps.get_tensor_model_parallel_group()
    size = ps.get_tensor_model_parallel_world_size()
    if size == 1:
        return [param]
    shards = [torch.empty_like(param) for _ in range(size)]
    dist.all_gather(shards, param.contiguous(), group=group)
    return shards


def iter_hf_weights(
    model, table, dtype: torch.dtype | None = None, tensor_of=None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, full tensor) for every parameter of this pipeline stage, under the names the
    family's released checkpoints use (table.released_name; what exports and engines expect).

    Collective over the stage's TP group: every TP rank must iterate. dtype casts the yielded tensors.
    tensor_of(param) picks what is exported (default the parameter itself; e.g. its gradient).
    """
    released = getattr(table, "released_name", lambda name: name)
    module = unwrap(model)
    offset = get_transformer_layer_offset(module.config)
    for name, param in module.named_parameters():
        if _skip_on_export(name, module):
            continue
        row = resolve(table, name, offset)
        is_tp = getattr(param, "tensor_model_parallel", False) and not isinstance(row.transform, Replicated)
        value = param.detach() if tensor_of is None else tensor_of(param)
        shards = _gather_tp(value) if is_tp else [value]
        for hf_name, tensor in zip(row.hf_names, row.transform.merge(shards)):
            yield released(hf_name), tensor if dtype is None else tensor.to(dtype)


def export_hf(
    model,
    table,
    out_dir: str | os.PathLike,
    assets_dir: str | os.PathLike | None,
    dtype: torch.dtype | None = None,
    max_shard_mb: float = 4096,
) -> None:
    """Write the model as an HF directory: sharded safetensors + index, plus config / tokenizer / processor
    files copied from assets_dir. Collective over all ranks; the first TP / DP rank of each pipeline stage
    writes its stage's tensors, rank 0 writes the index.
    """
    out_dir = Path(out_dir)
    rank = dist.get_rank()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    writes = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    stage = ps.get_pipeline_model_parallel_rank()
    writer = ShardedWriter(out_dir, f".tmp-pp{stage:03d}", max_shard_mb)
    for name, tensor in iter_hf_weights(model, table, dtype):
        if writes:
            writer.add(name, tensor)
    if writes:
        writer.flush()
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (stage, writer.written if writes else []))
    if rank == 0:
        ordered = [p for _, written in sorted(parts, key=lambda x: x[0]) for p in written]
        finalize_index(out_dir, ordered)
        if assets_dir is not None:
            copy_assets(assets_dir, out_dir)
    dist.barrier()
