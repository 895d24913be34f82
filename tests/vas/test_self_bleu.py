"""Self-BLEU-123 equals NLTK's sentence_bleu with SmoothingFunction().method1."""

import numpy as np
import pytest

from mmr1_mega.vas.ngrams import pack_responses
from mmr1_mega.vas.self_bleu import self_bleu, self_bleu_packed
from tests.vas.conftest import random_groups

bleu_score = pytest.importorskip("nltk.translate.bleu_score")


def nltk_self_bleu(group):
    smooth = bleu_score.SmoothingFunction().method1
    return [
        bleu_score.sentence_bleu(
            group[:j] + group[j + 1 :], group[j], weights=(1 / 3, 1 / 3, 1 / 3), smoothing_function=smooth
        )
        for j in range(len(group))
    ]


def test_self_bleu_equals_nltk_on_random_token_groups(rng):
    groups = random_groups(rng, 150)
    for group, ours in zip(groups, self_bleu(groups)):
        np.testing.assert_allclose(ours, nltk_self_bleu(group), rtol=0, atol=1e-12)


def test_self_bleu_on_long_responses_equals_nltk(rng):
    groups = [[rng.integers(0, 30, int(rng.integers(150, 300))).tolist() for _ in range(5)] for _ in range(3)]
    for group, ours in zip(groups, self_bleu(groups)):
        np.testing.assert_allclose(ours, nltk_self_bleu(group), rtol=0, atol=1e-12)


def test_exact_ngram_renumbering_fallback_equals_nltk(rng):
    groups = random_groups(rng, 60)
    flat = self_bleu_packed(pack_responses(groups), force_dense_grams=True)
    expected = np.concatenate([nltk_self_bleu(g) for g in groups])
    np.testing.assert_allclose(flat, expected, rtol=0, atol=1e-12)


def test_token_ids_outside_the_lookup_range_are_compared_by_value(rng):
    groups = [[(rng.integers(0, 3, 8) * (1 << 40) - 7).tolist() for _ in range(4)] for _ in range(5)]
    for group, ours in zip(groups, self_bleu(groups)):
        np.testing.assert_allclose(ours, nltk_self_bleu(group), rtol=0, atol=1e-12)


def test_empty_and_short_hypotheses_follow_nltk():
    group = [[], [5], [5, 6], [5, 6, 7], [9, 9]]
    np.testing.assert_allclose(self_bleu([group])[0], nltk_self_bleu(group), rtol=0, atol=1e-12)
    assert self_bleu([group])[0][0] == 0.0


def test_numpy_array_responses_equal_list_responses(rng):
    groups = random_groups(rng, 20)
    as_arrays = [[np.asarray(r, dtype=np.int32) for r in g] for g in groups]
    for a, b in zip(self_bleu(groups), self_bleu(as_arrays)):
        np.testing.assert_array_equal(a, b)


def test_single_response_has_no_self_bleu():
    assert np.isnan(self_bleu([[[1, 2, 3]]])[0][0])


def test_text_instead_of_token_ids_is_rejected():
    with pytest.raises(ValueError, match="token ids"):
        self_bleu([[["a", "b"], ["c"]]])
