"""HF-named tensors grouped into buckets of at most bucket_mb, streamed, and packed for transport.

A bucket is a list of (HF name, tensor). Buckets are built lazily from an iterator, so at most one
bucket (plus the tensor being added) is held at a time; a tensor larger than bucket_mb travels alone.
For point-to-point transport a bucket is packed into one flat uint8 tensor plus metadata (name, dtype,
shape, byte range), the same layout SGLang's flattened buckets use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

Bucket = list[tuple[str, torch.Tensor]]
ALIGN = 16  # bytes


def nbytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor's elements occupy."""
    return tensor.numel() * tensor.element_size()


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_mb: float) -> Iterator[Bucket]:
    """Group a stream of (name, tensor) into buckets of at most bucket_mb MiB, in stream order.

    A tensor larger than a bucket is yielded alone. Raises ValueError for bucket_mb <= 0.
    """
    if bucket_mb <= 0:
        raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
    limit = int(bucket_mb * 2**20)
    bucket: Bucket = []
    size = 0
    for name, tensor in named_tensors:
        n = nbytes(tensor)
        if bucket and size + n > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += n
    if bucket:
        yield bucket


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lives in a packed bucket: bytes [start, end) of the flat buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def pack(bucket: Bucket) -> tuple[torch.Tensor, list[TensorMeta]]:
    """One contiguous uint8 buffer holding every tensor's bytes, and the metadata to rebuild them."""
    metas, parts, offset = [], [], 0
    for name, t in bucket:
        flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
        if offset % ALIGN:  # a dtype view of the buffer needs an offset that is a multiple of the item size
            parts.append(torch.zeros(ALIGN - offset % ALIGN, dtype=torch.uint8, device=flat.device))
            offset += ALIGN - offset % ALIGN
        dtype = str(t.dtype).removeprefix("torch.")
        metas.append(TensorMeta(name, dtype, tuple(t.shape), offset, offset + flat.numel()))
        parts.append(flat)
        offset += flat.numel()
    # no padding after the last tensor: receivers size the buffer by the last tensor's end
    return (torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)), metas


def unpack(buffer: torch.Tensor, metas: list[TensorMeta]) -> Bucket:
    """The (name, tensor) pairs of a packed bucket, as views into buffer (no copy)."""
    return [(m.name, buffer[m.start : m.end].view(getattr(torch, m.dtype)).reshape(m.shape)) for m in metas]
