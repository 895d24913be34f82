"""Refresh schedule, staleness-first partial refresh, chunking, online update, logging metrics."""

import numpy as np
import pytest

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.controller import VarianceAwareSampler
from mmr1_mega.vas.outcomes import RolloutOutcomes
from tests.vas.conftest import IndexScorer


def test_refresh_runs_before_the_first_step_and_every_t_update_steps():
    scorer = IndexScorer()
    vas = VarianceAwareSampler(10, VASConfig(update_every_steps=4, chunk_prompts=100, progress=False))
    refreshed_at = []
    for step in range(13):
        before = len(scorer.calls)
        vas.next_indices(3, scorer)
        if len(scorer.calls) > before:
            refreshed_at.append(step)
    assert refreshed_at == [0, 4, 8, 12]


def test_refresh_calls_the_scorer_in_chunks_covering_the_pool():
    scorer = IndexScorer()
    vas = VarianceAwareSampler(23, VASConfig(chunk_prompts=5, progress=False))
    vas.next_indices(4, scorer)
    assert [len(c) for c in scorer.calls] == [5, 5, 5, 5, 3]
    assert sorted(sum(scorer.calls, [])) == list(range(23))


def test_partial_refresh_scores_the_stalest_prompts_first():
    scorer = IndexScorer()
    vas = VarianceAwareSampler(
        20, VASConfig(refresh_share=0.25, update_every_steps=1, chunk_prompts=100, progress=False)
    )
    for _ in range(4):
        vas.next_indices(2, scorer)
    assert [len(c) for c in scorer.calls] == [5, 5, 5, 5]
    assert sorted(sum(scorer.calls, [])) == list(range(20))
    vas.next_indices(2, scorer)
    assert scorer.calls[-1] == [0, 1, 2, 3, 4]


def test_unscored_prompts_take_the_mean_vps_of_scored_ones():
    vas = VarianceAwareSampler(20, VASConfig(refresh_share=0.5, progress=False))
    vas.next_indices(2, IndexScorer())
    vps = vas.table.vps
    assert np.allclose(vps[10:], vps[:10].mean())


def test_wrong_number_of_outcomes_is_reported():
    vas = VarianceAwareSampler(6, VASConfig(progress=False))
    with pytest.raises(ValueError, match="one RolloutOutcomes per prompt"):
        vas.next_indices(2, lambda idx: IndexScorer()(idx)[:-1])


def test_due_refresh_without_a_scorer_is_reported():
    with pytest.raises(ValueError, match="score_fn"):
        VarianceAwareSampler(6, VASConfig(progress=False)).next_indices(2)


def test_online_update_moves_only_the_observed_prompts():
    vas = VarianceAwareSampler(12, VASConfig(online_update=True, progress=False))
    vas.next_indices(4, IndexScorer())
    before = vas.table.vps.copy()
    idx = [2, 3]  # mixed outcomes at refresh; 40 identical all-correct rollouts lower both OVS and TDS
    vas.observe(idx, [RolloutOutcomes([1.0] * 40, [[1, 2, 3]] * 40)] * 2)
    after = vas.table.vps
    assert np.array_equal(np.delete(after, idx), np.delete(before, idx))
    assert (after[idx] < before[idx]).all()


def test_online_update_is_off_by_default():
    vas = VarianceAwareSampler(12, VASConfig(progress=False))
    vas.next_indices(4, IndexScorer())
    before = vas.table.vps.copy()
    vas.observe([2], [RolloutOutcomes([1.0] * 8, [[1]] * 8)])
    assert np.array_equal(vas.table.vps, before)


def test_metrics_report_vps_statistics_and_weighted_share():
    vas = VarianceAwareSampler(30, VASConfig(mixture_ratio=0.25, progress=False))
    vas.next_indices(8, IndexScorer())
    m = vas.metrics()
    assert m["vas/weighted_share"] == 0.25 and m["vas/uniform_share"] == 0.75
    assert m["vas/vps_min"] == pytest.approx(0.0) and m["vas/vps_max"] == pytest.approx(1.0, abs=1e-6)
    assert m["vas/vps_mean"] == pytest.approx(vas.table.vps.mean())
    h = vas.histograms(bins=5)
    assert h["vps"].sum() == 30 and h["pass_rate"].sum() == 30 and h["edges"].size == 6


def test_without_refreshes_vps_comes_from_training_rollouts_only():
    vas = VarianceAwareSampler(12, VASConfig(online_update=True, refresh=False, progress=False))
    first = vas.next_indices(4, None)  # no refresh is ever due: no scorer needed
    assert len(first) == 4 and vas.refreshes == 0 and not vas.table.scored.any()
    mixed = RolloutOutcomes([1.0, 0.0] * 4, [[1, 2], [3, 4]] * 4)  # P = 0.5: the highest OVS
    same = RolloutOutcomes([1.0] * 8, [[1, 2]] * 8)  # P = 1, identical responses: the lowest VPS
    vas.observe([2, 5], [mixed, same])
    assert vas.table.vps[2] > 0.99 and vas.table.vps[5] == 0.0
    unseen = np.delete(np.arange(12), [2, 5])
    assert np.allclose(vas.table.vps[unseen], vas.table.vps[[2, 5]].mean())  # the observed prompts' mean
    drawn = np.concatenate([vas.next_indices(4, None) for _ in range(200)])
    assert (drawn == 2).sum() > (drawn == 5).sum()  # the varied prompt is drawn more than the settled one


def test_refresh_off_needs_the_online_update():
    with pytest.raises(ValueError, match="online_update"):
        VASConfig(refresh=False).validate()
