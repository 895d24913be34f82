"""The disaggregated weight path on gloo: our trainer-side group and flat broadcast, received by
SGLang's own receiving code (its FlattenedTensorBucket, read from the pinned source)."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.distributed.init import free_port
from mmr1_mega.distributed.launch import run_on_ranks
from tests.distributed import rollout_workers
from tests.rollout import sglang_source

pytestmark = pytest.mark.distributed


def test_buckets_broadcast_over_the_update_group_arrive_bitwise_at_an_sglang_receiver():
    sglang_source.root()  # skips without the SGLang source
    g = torch.Generator().manual_seed(int(torch.randint(0, 1000, ()).item()))
    buckets = [
        [
            ("model.layers.0.self_attn.q_proj.weight", torch.randn(8, 8, generator=g).to(torch.bfloat16)),
            ("model.norm.weight", torch.randn(8, generator=g).to(torch.bfloat16)),
        ],
        [("lm_head.weight", torch.randn(16, 8, generator=g))],
    ]
    _, received = run_on_ranks(rollout_workers.disaggregated_update, 2, free_port(), buckets)
    assert len(received) == len(buckets)
    for sent, got in zip(buckets, received):
        assert [n for n, _ in got] == [n for n, _ in sent]
        assert all(a.dtype == b.dtype and torch.equal(a, b) for (_, a), (_, b) in zip(got, sent))
