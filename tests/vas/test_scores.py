"""OVS / TDS / VPS definitions and their values on degenerate inputs."""

import math

import numpy as np
import pytest

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.outcomes import RolloutOutcomes
from mmr1_mega.vas.scores import PromptScores, score_prompts
from mmr1_mega.vas.table import VPSTable


def test_ovs_is_pass_rate_times_its_complement(rng):
    acc = (rng.random((20, 8)) < rng.random((20, 1))).astype(float)
    scores = score_prompts([RolloutOutcomes(a.tolist(), [[1, 2]] * 8) for a in acc], VASConfig())
    p = acc.mean(axis=1)
    np.testing.assert_allclose(scores.pass_rate * (1 - scores.pass_rate), p * (1 - p))


def test_nan_accuracy_counts_as_failure_or_is_excluded():
    out = [RolloutOutcomes([1.0, float("nan"), 1.0, 0.0], [[1]] * 4)]
    assert score_prompts(out, VASConfig(nan_accuracy="failure")).pass_rate[0] == 0.5
    assert score_prompts(out, VASConfig(nan_accuracy="exclude")).pass_rate[0] == pytest.approx(2 / 3)
    all_nan = [RolloutOutcomes([float("nan")] * 3, [[1]] * 3)]
    assert score_prompts(all_nan, VASConfig(nan_accuracy="exclude")).pass_rate[0] == 0.0


@pytest.mark.parametrize("metric", ["self_bleu", "distinct_n", "edit_distance"])
def test_degenerate_groups_get_defined_tds(metric):
    cfg = VASConfig(tds_metric=metric)
    groups = {
        "single": [[3, 1, 4, 1, 5]],
        "all_empty": [[], [], []],
        "identical": [[7, 8, 9, 10]] * 4,
    }
    out = [RolloutOutcomes([1.0] * len(g), g) for g in groups.values()]
    tds = dict(zip(groups, score_prompts(out, cfg).tds))
    assert tds["single"] == 0.0 and tds["all_empty"] == 0.0
    if metric != "distinct_n":
        assert tds["identical"] == pytest.approx(0.0, abs=1e-12)
    else:
        assert tds["identical"] == pytest.approx(1 / 4)


def test_self_bleu_tds_is_one_minus_mean_self_bleu():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    group = [[1, 2, 3, 4], [1, 2, 3, 5], [4, 3, 2, 1]]
    smooth = bleu_score.SmoothingFunction().method1
    ref = [
        bleu_score.sentence_bleu(
            group[:j] + group[j + 1 :], group[j], weights=(1 / 3,) * 3, smoothing_function=smooth
        )
        for j in range(3)
    ]
    tds = score_prompts([RolloutOutcomes([0.0] * 3, group)], VASConfig()).tds[0]
    assert tds == pytest.approx(1 - np.mean(ref), abs=1e-12)


def test_blended_tds_metrics_weigh_each_metric():
    group = [[1, 2, 3, 4], [1, 2, 3, 5], [4, 3, 2, 1]]
    out = [RolloutOutcomes([0.0] * 3, group)]
    a = score_prompts(out, VASConfig(tds_metric="self_bleu")).tds[0]
    b = score_prompts(out, VASConfig(tds_metric="distinct_n")).tds[0]
    mixed = score_prompts(out, VASConfig(tds_metric={"self_bleu": 3, "distinct_n": 1})).tds[0]
    assert mixed == pytest.approx(0.75 * a + 0.25 * b)


def test_vps_is_minmax_normalised_weighted_sum_blended_by_momentum(rng):
    cfg = VASConfig(alpha=0.8, beta=0.2, momentum=0.3, eps=1e-8)
    table = VPSTable(6, cfg)
    idx = np.arange(6)

    def scores():
        trials = np.full(6, 4.0)
        return PromptScores(rng.integers(0, 5, 6).astype(float), trials, rng.random(6), trials)

    def expected_fresh(s):
        p = s.successes / s.trials
        raw = 0.8 * p * (1 - p) + 0.2 * s.tds
        return (raw - raw.min()) / (raw.max() - raw.min() + 1e-8)

    first, second = scores(), scores()
    table.apply_refresh(idx, first, step=0)
    np.testing.assert_allclose(table.vps, expected_fresh(first))
    table.apply_refresh(idx, second, step=5)
    np.testing.assert_allclose(table.vps, 0.3 * expected_fresh(first) + 0.7 * expected_fresh(second))
    assert [h["step"] for h in table.history] == [0, 5]


def test_nan_rewards_and_empty_responses_give_finite_vps():
    table = VPSTable(3, VASConfig())
    out = [
        RolloutOutcomes([float("nan")] * 4, [[]] * 4),
        RolloutOutcomes([1.0, 0.0], [[1], []]),
        RolloutOutcomes([1.0], [[2, 3]]),
    ]
    table.apply_refresh(np.arange(3), score_prompts(out, table.cfg), step=0)
    assert np.all(np.isfinite(table.vps)) and np.all((table.vps >= 0) & (table.vps <= 1))


def test_accuracies_outside_unit_interval_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RolloutOutcomes([2.0], [[1]])


@pytest.mark.parametrize(
    "field,value",
    [
        ("mixture_ratio", 1.5),
        ("alpha", -1.0),
        ("beta", math.nan),
        ("tds_metric", "rouge"),
        ("momentum", 1.0),
        ("refresh_share", 0.0),
        ("update_every_steps", 0),
        ("nan_accuracy", "zero"),
        ("eps", 0.0),
    ],
)
def test_config_validation_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"vas.{field}"):
        VASConfig(**{field: value}).validate()
