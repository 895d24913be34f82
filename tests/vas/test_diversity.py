"""distinct-n and pairwise normalised edit distance equal plain-Python references."""

import numpy as np

from mmr1_mega.vas.diversity import distinct_n_packed, edit_distance_packed
from mmr1_mega.vas.ngrams import pack_responses
from tests.vas.conftest import random_groups


def levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, row = row, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
    return row[-1]


def test_edit_distance_equals_plain_dp(rng):
    groups = random_groups(rng, 40, n_range=(1, 6), len_range=(0, 16))
    ours = edit_distance_packed(pack_responses(groups))
    for group, value in zip(groups, ours):
        pairs = [
            levenshtein(a, b) / max(len(a), len(b)) if max(len(a), len(b)) else 0.0
            for k, a in enumerate(group)
            for b in group[k + 1 :]
        ]
        assert abs(value - (np.mean(pairs) if pairs else 0.0)) < 1e-12


def test_distinct_n_equals_set_reference(rng):
    groups = random_groups(rng, 40, n_range=(1, 6))
    for n in (1, 2, 3):
        ours = distinct_n_packed(pack_responses(groups), n)
        for group, value in zip(groups, ours):
            grams = [tuple(r[i : i + n]) for r in group for i in range(len(r) - n + 1)]
            assert abs(value - (len(set(grams)) / len(grams) if grams else 0.0)) < 1e-12
