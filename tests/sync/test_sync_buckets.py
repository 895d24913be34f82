"""Buckets: size limits, order, the big-tensor rule, streaming, and the packed transport format."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.sync.buckets import iter_buckets, nbytes, pack, unpack
from mmr1_mega.sync.checksum import tensor_checksum


def _tensors(g, sizes, dtype=torch.float32):
    return [(f"t{i}", torch.randn(n, generator=g).to(dtype)) for i, n in enumerate(sizes)]


def test_buckets_keep_stream_order_and_stay_under_the_limit():
    g = torch.Generator().manual_seed(int(torch.randint(0, 1000, ()).item()))
    named = _tensors(g, torch.randint(1, 3000, (40,), generator=g).tolist())
    limit_mb = 0.01  # 10485 bytes
    buckets = list(iter_buckets(iter(named), limit_mb))
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]
    for b in buckets:
        assert sum(nbytes(t) for _, t in b) <= limit_mb * 2**20 or len(b) == 1
    for a, b in zip(buckets, buckets[1:]):  # a bucket closes only when the next tensor would not fit
        assert sum(nbytes(t) for _, t in a) + nbytes(b[0][1]) > limit_mb * 2**20


def test_a_tensor_larger_than_a_bucket_travels_alone():
    g = torch.Generator().manual_seed(1)
    named = _tensors(g, [10, 100_000, 10])
    assert [[n for n, _ in b] for b in iter_buckets(named, 0.01)] == [["t0"], ["t1"], ["t2"]]


def test_buckets_are_built_lazily_from_the_stream():
    pulled = []

    def stream():
        for i in range(10):
            pulled.append(i)
            yield f"t{i}", torch.zeros(1024)  # 4 KiB each

    it = iter_buckets(stream(), 0.01)  # two tensors per bucket
    first = next(it)
    assert len(first) == 2 and pulled == [0, 1, 2]  # only one tensor beyond the first bucket was read


def test_bucket_size_must_be_positive():
    with pytest.raises(ValueError, match="bucket_mb must be > 0"):
        list(iter_buckets([("a", torch.zeros(1))], 0))


@pytest.mark.parametrize(
    "dtypes", [(torch.float32,), (torch.bfloat16, torch.float32, torch.float16, torch.int64)]
)
def test_pack_then_unpack_gives_back_every_tensor_bitwise(dtypes):
    g = torch.Generator().manual_seed(int(torch.randint(0, 1000, ()).item()))
    bucket = [
        (f"t{i}", (torch.randn(3, i + 2, generator=g) * 100).to(dtypes[i % len(dtypes)])) for i in range(7)
    ]
    buffer, metas = pack(bucket)
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1
    got = unpack(buffer.clone(), metas)
    assert [n for n, _ in got] == [n for n, _ in bucket]
    assert all(tensor_checksum(a) == tensor_checksum(b) for (_, a), (_, b) in zip(got, bucket))


def test_a_packed_bucket_is_exactly_as_long_as_receivers_allocate():
    """Receivers (relay, fan-out) allocate the last tensor's end: no padding may follow it, whatever the
    sizes (here FP8 weights and the 0-d fp32 scales that follow them)."""
    bucket = [
        ("w", torch.randn(3, 5).to(torch.float8_e4m3fn)),
        ("w_scale", torch.tensor(0.5)),
        ("b", torch.randn(3)),
        ("x_scale", torch.tensor(0.25)),
    ]
    for k in range(1, len(bucket) + 1):
        buffer, metas = pack(bucket[:k])
        assert buffer.numel() == metas[-1].end
        got = unpack(buffer, metas)
        assert all(tensor_checksum(a) == tensor_checksum(b) for (_, a), (_, b) in zip(got, bucket[:k]))


def test_checksum_sees_a_single_bit_and_the_dtype():
    t = torch.randn(64)
    flipped = t.clone()
    flipped.view(torch.int32)[17] ^= 1
    assert tensor_checksum(t) == tensor_checksum(t.clone())
    assert tensor_checksum(t) != tensor_checksum(flipped)
    assert tensor_checksum(torch.zeros(4, dtype=torch.int32)) != tensor_checksum(torch.zeros(4))
