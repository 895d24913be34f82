"""Shared helpers of the VAS tests: random token groups and a deterministic scoring callable."""

from __future__ import annotations

import numpy as np
import pytest

from mmr1_mega.vas.outcomes import RolloutOutcomes


def random_groups(
    rng: np.random.Generator, prompts: int, n_range=(2, 6), len_range=(0, 14), vocab_range=(1, 6)
):
    """Groups of responses with few distinct tokens (so n-grams repeat and overlap) and some empty ones."""
    groups = []
    for _ in range(prompts):
        vocab = int(rng.integers(*vocab_range))
        n = int(rng.integers(*n_range))
        groups.append([rng.integers(0, vocab, int(rng.integers(*len_range))).tolist() for _ in range(n)])
    return groups


class IndexScorer:
    """A scoring callable whose outcomes depend only on the prompt index (so runs are reproducible)."""

    def __init__(self, n: int = 4) -> None:
        self.n = n
        self.calls: list[list[int]] = []

    def __call__(self, indices: list[int]) -> list[RolloutOutcomes]:
        self.calls.append(list(indices))
        out = []
        for i in indices:
            rng = np.random.default_rng(i)
            p = (i % 7) / 6
            acc = (rng.random(self.n) < p).astype(float).tolist()
            resp = [rng.integers(0, 5, int(rng.integers(1, 10))).tolist() for _ in range(self.n)]
            out.append(RolloutOutcomes(acc, resp))
        return out


@pytest.fixture
def rng(request) -> np.random.Generator:
    seed = np.random.SeedSequence().entropy
    print(f"seed={seed}")
    return np.random.default_rng(seed)
