"""The mixed sampler: lambda semantics, convergence to VPS proportions, exact resume."""

import io

import numpy as np
import pytest
import torch

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.controller import VarianceAwareSampler
from mmr1_mega.vas.sampler import MixedSampler
from tests.vas.conftest import IndexScorer


def test_lambda_zero_is_a_reshuffled_pass_over_the_pool(rng):
    pool, batch = 60, 12
    s = MixedSampler(pool, 0.0, int(rng.integers(1 << 30)))
    s.set_weights(rng.random(pool))
    passes = [np.concatenate([s.draw(batch)[0] for _ in range(pool // batch)]) for _ in range(3)]
    for p in passes:
        assert sorted(p.tolist()) == list(range(pool))
    assert not np.array_equal(passes[0], passes[1]) and not np.array_equal(passes[1], passes[2])


def test_lambda_one_draws_only_in_proportion_to_vps(rng):
    pool = 8
    weights = np.array([0, 1, 2, 3, 0, 4, 5, 5], dtype=float)
    s = MixedSampler(pool, 1.0, int(rng.integers(1 << 30)))
    s.set_weights(weights)
    draws = np.concatenate([s.draw(100)[0] for _ in range(400)])
    freq = np.bincount(draws, minlength=pool) / draws.size
    assert freq[0] == 0 and freq[4] == 0
    # 40,000 draws: a frequency's standard error is <= sqrt(0.25 * 0.75 / 40000) = 0.0022; 0.01 is 4.6 sigma
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.01)


def test_lambda_half_takes_floor_share_from_vps_interleaved_rest_from_the_pass(rng):
    pool, batch, ratio = 40, 10, 0.55
    weights = np.zeros(pool)
    weights[:3] = 1.0
    s = MixedSampler(pool, ratio, int(rng.integers(1 << 30)))
    s.set_weights(weights)
    uniform = []
    for _ in range(8):
        idx, from_w = s.draw(batch)
        assert from_w.sum() == 5
        assert not (from_w[:-1] & from_w[1:]).any()  # spread, never two weighted in a row at 5 of 10
        assert np.isin(idx[from_w], [0, 1, 2]).all()
        uniform.extend(idx[~from_w].tolist())
    assert sorted(uniform) == list(range(pool))


def test_empirical_weighted_share_converges_to_vps_proportions(rng):
    pool = 30
    weights = rng.random(pool) ** 3
    s = MixedSampler(pool, 0.5, int(rng.integers(1 << 30)))
    s.set_weights(weights)
    picked = []
    for _ in range(2000):
        idx, from_w = s.draw(64)
        picked.append(idx[from_w])
    freq = np.bincount(np.concatenate(picked), minlength=pool) / (2000 * 32)
    # 64,000 weighted draws; the largest share here is < 0.2: standard error <= 0.0016, 0.006 is > 3.7 sigma
    # for the largest and far more for the rest (weights are cubed uniforms)
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.006)


def test_zero_vps_everywhere_falls_back_to_uniform_draws(rng):
    s = MixedSampler(50, 1.0, int(rng.integers(1 << 30)))
    s.set_weights(np.zeros(50))
    draws = np.concatenate([s.draw(50)[0] for _ in range(200)])
    assert np.unique(draws).size == 50


def test_resumed_sampler_continues_the_exact_index_sequence(rng):
    cfg = VASConfig(
        update_every_steps=3, n_rollouts=4, chunk_prompts=7, progress=False, seed=int(rng.integers(1 << 30))
    )
    pool, batch = 37, 8
    uninterrupted = VarianceAwareSampler(pool, cfg)
    expected = [uninterrupted.next_indices(batch, IndexScorer()).tolist() for _ in range(12)]

    first = VarianceAwareSampler(pool, cfg)
    got = [first.next_indices(batch, IndexScorer()).tolist() for _ in range(5)]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = VarianceAwareSampler(pool, cfg)
    resumed.load_state_dict(
        torch.load(buf)
    )  # weights_only=True: the state is plain tensors and Python values
    got += [resumed.next_indices(batch, IndexScorer()).tolist() for _ in range(7)]
    assert got == expected


def test_resume_on_a_different_pool_is_refused():
    cfg = VASConfig(progress=False)
    a = VarianceAwareSampler(10, cfg)
    a.next_indices(4, IndexScorer())
    with pytest.raises(ValueError, match="same dataset"):
        VarianceAwareSampler(11, cfg).load_state_dict(a.state_dict())


def test_disabled_vas_never_scores_and_shuffles(rng):
    scorer = IndexScorer()
    vas = VarianceAwareSampler(20, VASConfig(enabled=False, mixture_ratio=1.0, progress=False))
    idx = np.concatenate([vas.next_indices(5, scorer) for _ in range(4)])
    assert scorer.calls == [] and sorted(idx.tolist()) == list(range(20))
