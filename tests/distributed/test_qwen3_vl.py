"""Qwen3-VL on megatron-core: the pieces megatron-core lacks, against transformers."""

from __future__ import annotations

import pytest

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.qwen3_vl.rotary import interleaved_axis
from tests.distributed import qwen3_workers

pytestmark = pytest.mark.distributed


def test_the_interleaved_axes_follow_transformers_rule():
    # head_dim 128, section [24, 20, 20]: h at 1, 4, ..., 58; w at 2, 5, ..., 59; t elsewhere (0, 3, ..., 60-63)
    axis = interleaved_axis(64, [24, 20, 20]).tolist()
    assert axis[:6] == [0, 1, 2, 0, 1, 2] and axis[57:] == [0, 1, 2, 0, 0, 0, 0]
    assert axis.count(1) == 20 and axis.count(2) == 20 and axis.count(0) == 24


@pytest.mark.parametrize("head_dim,section", [(128, [24, 20, 20]), (64, [12, 10, 10]), (32, [6, 5, 5])])
def test_interleaved_mrope_equals_transformers_qwen3_vl_rotary(head_dim, section):
    [r] = run_on_ranks(qwen3_workers.rope_vs_transformers, 1, head_dim, section, 5_000_000.0, head_dim)
    assert r["shape"] == (37, 2, 1, head_dim)
    # the same products position x inverse frequency and the same cos / sin: equal to the last bit
    assert r["cos"] == 0.0 and r["sin"] == 0.0
    # megatron's contiguous sections are a different rope (the reason for the subclass)
    assert r["contiguous_cos"] > 0.1
