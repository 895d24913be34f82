"""Token-budget micro-batches (balanced partition) and the packing helpers the actor uses; megatron-core's
THD rope (the transformer-engine packing path) with packed mrope positions."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from mmr1_mega.actor.batch import balanced_partition, padded_partition
from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.qwen_vl.packing import (
    choose_rows,
    pack,
    row_plan,
    row_width,
    unpack_padded,
    unpack_rows,
)
from mmr1_mega.models.qwen_vl.rope import image_position_ids
from tests.distributed import model_workers


def _best_max_sum(lengths: list[int], k: int) -> int:
    """The smallest possible largest group sum over every assignment of lengths to k groups (brute force)."""
    best = sum(lengths)
    for assignment in itertools.product(range(k), repeat=len(lengths)):
        sums = [0] * k
        for n, g in zip(lengths, assignment):
            sums[g] += n
        best = min(best, max(sums))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_partition_fits_the_budget_covers_every_sample_and_is_balanced(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 50) for _ in range(rng.randint(2, 7))]
    budget = rng.randint(max(lengths), sum(lengths))
    groups = balanced_partition(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    sums = [sum(lengths[i] for i in g) for g in groups]
    assert max(sums) <= budget
    k = len(groups)
    assert k >= -(-sum(lengths) // budget)
    # longest-first greedy is within (4/3 - 1/(3k)) of the best largest group for its k (Graham, 1969)
    assert max(sums) <= (4 / 3 - 1 / (3 * k)) * _best_max_sum(lengths, k) + 1e-9
    # deterministic, in index order
    assert groups == balanced_partition(list(lengths), budget)
    assert all(g == sorted(g) for g in groups) and [g[0] for g in groups] == sorted(g[0] for g in groups)


@pytest.mark.parametrize("seed", range(6))
def test_padded_partition_bounds_rows_times_the_longest(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 20))]
    budget = rng.randint(max(lengths), 4 * max(lengths))
    groups = padded_partition(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) * max(lengths[i] for i in g) <= budget for g in groups)
    # longest first, each group as full as the budget lets it: merging a group with the next one (in order
    # of their longest sample) would not fit
    by_longest = sorted(groups, key=lambda g: (-max(lengths[i] for i in g), g[0]))
    for a in by_longest[:-1]:
        assert (len(a) + 1) * max(lengths[i] for i in a) > budget
    assert padded_partition([8, 3, 2, 7], 16) == [[0, 3], [1, 2]]


def test_partition_uses_one_group_when_everything_fits_and_refuses_a_too_long_sample():
    assert balanced_partition([3, 4, 5], 12) == [[0, 1, 2]]
    assert balanced_partition([], 5) == []
    for partition in (balanced_partition, padded_partition):
        with pytest.raises(ValueError, match="sample 1 has 9 tokens.*max_tokens_per_micro_batch \\(8\\)"):
            partition([2, 9, 3], 8)


def test_row_plan_is_first_fit_decreasing_and_fits():
    assert row_plan([5, 1, 7, 3], 7) == [[2], [0, 1], [3]]
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 30) for _ in range(rng.randint(1, 12))]
        width = row_width(lengths, 4)
        plan = row_plan(lengths, width)
        assert sorted(i for r in plan for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= width for r in plan)
        # first fit: no sample could have gone to an earlier row than its own
        assert len(plan) <= max(1, -(-sum(lengths) * 2 // width))


def test_choose_rows_takes_the_cheapest_width_by_the_cost_model():
    rng = random.Random(1)
    for _ in range(30):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 16))]
        per_position, per_pair = rng.choice([(1.0, 0.0), (100.0, 1.0), (1.0, 1.0), (1e4, 1.0)])
        width, plan = choose_rows(lengths, 2, per_position, per_pair)
        base = row_width(lengths, 2)
        assert width % base == 0 and all(sum(lengths[i] for i in r) <= width for r in plan)
        assert sorted(i for r in plan for i in r) == list(range(len(lengths)))
        cost = len(plan) * (per_position * width + per_pair * width**2)
        for k in range(1, len(lengths) + 1):  # every width it may try costs at least as much
            w = base * k
            assert len(row_plan(lengths, w)) * (per_position * w + per_pair * w**2) >= cost
    # attention free: one row of everything; attention dear: one sample per row
    assert choose_rows([4, 3, 3, 2], 1, 1.0, 0.0) == (12, [[0, 1, 2, 3]])
    assert choose_rows([4, 4, 4, 4], 1, 1.0, 10.0) == (4, [[0], [1], [2], [3]])


def test_pack_then_unpack_gives_the_padded_rows_back():
    g = torch.Generator().manual_seed(3)
    lengths = [5, 1, 7, 3]
    ids = torch.randint(1, 100, (4, 7), generator=g)
    pos = torch.randint(0, 50, (3, 4, 7), generator=g)
    img = torch.rand(4, 7, generator=g) > 0.5
    keep = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    # block-diagonal rows of the longest sample's width (8 with multiple 4), next fit in order: [5, 1] [7] [3]
    row = pack(ids, pos, lengths, multiple=4, image_mask=img)
    assert row.input_ids.shape == (3, 8) and row.offsets == [0, 5, 8, 16] and row.cu_seqlens is None
    for packed, padded in ((row.input_ids, ids), (row.image_mask, img), (row.position_ids[0], pos[0])):
        back = unpack_padded(packed.float(), row, 7)
        assert torch.equal(back, torch.where(keep, padded.float(), 0.0))
    assert [t.tolist() for t in unpack_rows(row.input_ids, row)] == [
        ids[i, :n].tolist() for i, n in enumerate(lengths)
    ]
    # skip_first drops each sample's first token (a packed next-token score from the token before it)
    back = unpack_padded(row.input_ids.float(), row, 7, skip_first=True)
    assert torch.equal(back[:, 0], torch.zeros(4)) and torch.equal(
        back[:, 1:], torch.where(keep, ids, 0)[:, 1:].float()
    )
    # the mask: each sample attends causally to itself; padding only to itself
    allowed = ~row.attention_mask[:, 0]
    sample = torch.tensor([[0] * 5 + [1] + [-1] * 2, [2] * 7 + [-1], [3] * 3 + [-1] * 5])
    expect = (
        (sample[:, :, None] == sample[:, None]) & (sample[:, :, None] >= 0) & torch.ones(8, 8).tril().bool()
    )
    assert torch.equal(allowed, expect | torch.eye(8, dtype=torch.bool))
    # rows as planned: [7] [5, 1] [3] after ordering the samples so
    planned = pack(ids[[2, 0, 1, 3]], pos[:, [2, 0, 1, 3]], [7, 5, 1, 3], multiple=4, rows=[1, 2, 1])
    assert planned.input_ids.shape == (3, 8) and planned.offsets == [0, 8, 13, 16]
    with pytest.raises(ValueError, match="more than its width"):
        pack(ids, pos, lengths, rows=[2, 2])
    # THD: one row; the padding is a segment of its own, so cu_seqlens covers every packed position
    thd = pack(ids, pos, lengths, multiple=5, thd=True)
    assert thd.input_ids.shape == (1, 20) and thd.attention_mask is None
    assert thd.cu_seqlens.tolist() == [0, 5, 6, 13, 16, 20]
    params = thd.packed_seq_params()
    assert params.qkv_format == "thd" and params.max_seqlen_q == 7


def test_packed_unpack_gradient_reaches_only_kept_positions():
    ids, pos = torch.ones(2, 5, dtype=torch.long), torch.zeros(3, 2, 5, dtype=torch.long)
    row = pack(ids, pos, [4, 5], thd=True)
    x = torch.randn(1, 9, requires_grad=True)
    unpack_padded(x, row, 5, skip_first=True).sum().backward()
    assert x.grad.tolist()[0] == [0, 1, 1, 1, 0, 1, 1, 1, 1]


@pytest.mark.distributed
def test_megatron_thd_rope_with_packed_mrope_positions_equals_rope_per_sample():
    # samples with images: 3-D positions that are not 0..L-1 (what a THD rope indexing by position within
    # each sequence, e.g. transformer-engine's fused THD kernel, gets wrong)
    merge = 2
    img = image_position_ids(2, torch.tensor([1, 4, 6]), merge)  # 6 tokens at t=2, h 2..3, w 2..4
    after = img.max() + 1
    s0 = torch.cat([torch.arange(2).expand(3, -1), img, torch.arange(3).expand(3, -1) + after], 1)
    s1 = torch.arange(4).expand(3, -1)
    s2 = torch.cat(
        [image_position_ids(0, torch.tensor([1, 2, 2]), merge), torch.arange(1, 3).expand(3, -1)], 1
    )
    positions = [s0.tolist(), s1.tolist(), s2.tolist()]
    lengths = [s0.shape[1], s1.shape[1], s2.shape[1]]
    [diff] = run_on_ranks(model_workers.thd_rope_vs_per_sample, 1, lengths, positions, 4, 0)
    # the same elementwise products in the same order: equal to the last bit
    assert diff == 0.0
