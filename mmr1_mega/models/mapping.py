"""HF <-> megatron weight mapping: a table of (megatron name, HF names, transform) rows.

The same table serves loading (HF -> one TP shard), export and weight sync (TP shards -> HF tensors).
Names are patterns: `{layer}` is a decoder layer number (global in HF names, local to the pipeline stage
in megatron names) and `{rest}` matches any dotted suffix (used for modules copied whole, like the vision
tower).

Transforms (megatron-core's TP layouts):
- Replicated: the same tensor on every TP rank.
- ColumnParallel / RowParallel: split along dim 0 / dim 1 across TP ranks.
- FusedQKV: megatron's linear_qkv holds, per query group, [q heads of the group; k; v]; TP ranks own
  consecutive query groups.
- GatedMLP: megatron's SwiGLU linear_fc1 holds [gate_r; up_r] per TP rank r (not [gate; up] split).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# read(name, dim, start, stop) -> the HF tensor `name`, sliced to [start, stop) along dim (dim None: whole).
Reader = Callable[[str, "int | None", int, int], torch.Tensor]


class WeightMappingError(ValueError):
    """A checkpoint does not fit the model (missing tensor, wrong shape, unknown name)."""


def _rows(total: int, tp_rank: int, tp_size: int, what: str) -> tuple[int, int]:
    if total % tp_size:
        raise WeightMappingError(f"{what}: size {total} is not divisible by tensor_parallel={tp_size}")
    per = total // tp_size
    return tp_rank * per, (tp_rank + 1) * per


@dataclass(frozen=True)
class Replicated:
    partition_dim: int | None = None

    def shard(self, read: Reader, names, shapes, tp_rank: int, tp_size: int) -> torch.Tensor:
        return read(names[0], None, 0, 0)

    def merge(self, shards: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [shards[0]]


@dataclass(frozen=True)
class ColumnParallel:
    partition_dim: int = 0

    def shard(self, read, names, shapes, tp_rank, tp_size):
        a, b = _rows(shapes[0][0], tp_rank, tp_size, names[0])
        return read(names[0], 0, a, b)

    def merge(self, shards):
        return [torch.cat(list(shards), dim=0)]


@dataclass(frozen=True)
class RowParallel:
    partition_dim: int = 1

    def shard(self, read, names, shapes, tp_rank, tp_size):
        a, b = _rows(shapes[0][1], tp_rank, tp_size, names[0])
        return read(names[0], 1, a, b)

    def merge(self, shards):
        return [torch.cat(list(shards), dim=1)]


@dataclass(frozen=True)
class FusedQKV:
    """HF q_proj, k_proj, v_proj (weight or bias) <-> megatron linear_qkv, grouped by query group."""

    num_heads: int
    num_query_groups: int
    head_dim: int
    partition_dim: int = 0

    def shard(self, read, names, shapes, tp_rank, tp_size):
        g0, g1 = _rows(self.num_query_groups, tp_rank, tp_size, "num_query_groups")
        hpg = self.num_heads // self.num_query_groups
        d = self.head_dim
        q = read(names[0], 0, g0 * hpg * d, g1 * hpg * d)
        k = read(names[1], 0, g0 * d, g1 * d)
        v = read(names[2], 0, g0 * d, g1 * d)
        return self._interleave(q, k, v, g1 - g0)

    def _interleave(self, q, k, v, groups):
        hpg, d = self.num_heads // self.num_query_groups, self.head_dim
        tail = q.shape[1:]
        parts = (q.reshape(groups, hpg * d, *tail), k.reshape(groups, d, *tail), v.reshape(groups, d, *tail))
        return torch.cat(parts, dim=1).reshape(groups * (hpg + 2) * d, *tail)

    def merge(self, shards):
        full = torch.cat(list(shards), dim=0)
        hpg, d = self.num_heads // self.num_query_groups, self.head_dim
        tail = full.shape[1:]
        grouped = full.reshape(self.num_query_groups, (hpg + 2) * d, *tail)
        q, k, v = grouped.split([hpg * d, d, d], dim=1)
        return [t.reshape(-1, *tail).contiguous() for t in (q, k, v)]


@dataclass(frozen=True)
class GatedMLP:
    """HF gate_proj, up_proj <-> megatron SwiGLU linear_fc1, stored per TP rank as [gate_r; up_r]."""

    partition_dim: int = 0

    def shard(self, read, names, shapes, tp_rank, tp_size):
        a, b = _rows(shapes[0][0], tp_rank, tp_size, names[0])
        return torch.cat([read(names[0], 0, a, b), read(names[1], 0, a, b)], dim=0)

    def merge(self, shards):
        halves = [s.chunk(2, dim=0) for s in shards]
        return [torch.cat([h[0] for h in halves], 0), torch.cat([h[1] for h in halves], 0)]


Transform = "Replicated | ColumnParallel | RowParallel | FusedQKV | GatedMLP"


@dataclass(frozen=True)
class Mapping:
    """One row of a weight-mapping table."""

    megatron: str
    hf: tuple[str, ...]
    transform: object

    def _regex(self) -> re.Pattern:
        pattern = re.escape(self.megatron).replace(r"\{layer\}", r"(?P<layer>\d+)")
        pattern = pattern.replace(r"\{rest\}", r"(?P<rest>.+)")
        return re.compile(pattern + "$")

    def match(self, megatron_name: str) -> dict[str, str] | None:
        m = self._regex().match(megatron_name)
        return m.groupdict() if m else None


@dataclass(frozen=True)
class ResolvedMapping:
    """A mapping row applied to one concrete megatron parameter."""

    megatron_name: str
    hf_names: tuple[str, ...]
    transform: object


def resolve(table: Sequence[Mapping], megatron_name: str, layer_offset: int) -> ResolvedMapping:
    """Find the row for a megatron parameter name and fill in the HF names.

    layer_offset: global number of this pipeline stage's first decoder layer.
    Raises WeightMappingError when no row matches.
    """
    for row in table:
        groups = row.match(megatron_name)
        if groups is None:
            continue
        fill = {}
        if "layer" in groups:
            fill["layer"] = str(int(groups["layer"]) + layer_offset)
        if "rest" in groups:
            fill["rest"] = groups["rest"]
        return ResolvedMapping(megatron_name, tuple(h.format(**fill) for h in row.hf), row.transform)
    raise WeightMappingError(f"no weight mapping for megatron parameter {megatron_name!r}")


class WeightTable(list):
    """A family's Mapping rows, and how its HF names are written where they leave the project (an export):
    released_name(on-disk name used in the rows) -> the name the released checkpoints use. Identity for
    Qwen2 / Qwen2.5-VL; Qwen3-VL checkpoints keep transformers 5's in-memory names (model.language_model.*,
    model.visual.*), which transformers does not rename on loading."""

    def __init__(self, rows, released_name=None):
        super().__init__(rows)
        self.released_name = released_name or (lambda name: name)
