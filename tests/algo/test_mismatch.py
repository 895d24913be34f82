"""The train-inference mismatch metric against a direct fp64 computation on fresh random inputs, split over
ranks as the trainer splits it."""

from __future__ import annotations

import math

import torch

from mmr1_mega.algo.mismatch import combine_mismatch, mismatch_stats


def test_mismatch_metrics_equal_a_direct_computation_whatever_the_split():
    g = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ()).item()))
    engine = -torch.rand(6, 20, generator=g, dtype=torch.float64) * 5
    actor = engine + torch.randn(6, 20, generator=g, dtype=torch.float64) * 0.3
    mask = torch.rand(6, 20, generator=g) > 0.4
    mask[0] = False  # a sample with no response tokens
    d = [float(actor[i, j] - engine[i, j]) for i in range(6) for j in range(20) if mask[i, j]]
    ref = {
        "rollout/logp_mismatch_abs_mean": sum(abs(x) for x in d) / len(d),
        "rollout/logp_mismatch_abs_max": max(abs(x) for x in d),
        "rollout/logp_mismatch_k3": sum(math.exp(x) - x - 1 for x in d) / len(d),
    }
    whole = combine_mismatch([mismatch_stats(engine, actor, mask)])
    split = combine_mismatch(
        [mismatch_stats(engine[s], actor[s], mask[s]) for s in (slice(0, 1), slice(1, 4), slice(4, 6))]
        + [None]
    )
    for got in (whole, split):
        assert got.keys() == ref.keys()
        for k in ref:  # fp64 sums of 120 terms in another order: a few ulps of the sum
            assert math.isclose(got[k], ref[k], rel_tol=1e-12), (k, got[k], ref[k])
    assert ref["rollout/logp_mismatch_k3"] > 0


def test_identical_logprobs_have_no_mismatch_and_no_tokens_give_no_metrics():
    lp = -torch.rand(3, 5)
    out = combine_mismatch([mismatch_stats(lp, lp.clone(), torch.ones(3, 5))])
    assert out == {
        "rollout/logp_mismatch_abs_mean": 0.0,
        "rollout/logp_mismatch_abs_max": 0.0,
        "rollout/logp_mismatch_k3": 0.0,
    }
    assert combine_mismatch([mismatch_stats(lp, lp, torch.zeros(3, 5)), None]) == {}
