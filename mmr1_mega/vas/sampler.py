"""The mixed sampler of MMR1 Algorithm 1: part of each batch in proportion to VPS, the rest a shuffled pass."""

from __future__ import annotations

import math

import numpy as np
import torch


class MixedSampler:
    """Draws batches of prompt indices from a pool of `pool_size` prompts.

    Each batch of B holds k = floor(lambda * B) indices drawn with replacement with probability proportional to
    the weights (VPS) and B - k indices taken in order from a uniform random permutation of the pool, which is
    reshuffled at each wrap. The shuffle is an incremental Fisher-Yates (one swap per index taken), so a draw
    costs O(B log pool) and a wrap costs nothing extra. Weighted entries are spread evenly through the batch.
    Without weights, or with all-zero weights, the weighted part is drawn uniformly with replacement.
    """

    def __init__(self, pool_size: int, mixture_ratio: float, seed: int) -> None:
        """Takes: pool_size >= 1, mixture_ratio lambda in [0, 1], seed. Raises: ValueError on an empty pool."""
        if pool_size < 1:
            raise ValueError(f"the prompt pool is empty (pool_size={pool_size}): check the training dataset")
        self.pool_size = pool_size
        self.mixture_ratio = mixture_ratio
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.perm = np.arange(pool_size, dtype=np.int64)
        self.cursor = 0
        self.passes = 0
        self._cdf: np.ndarray | None = None
        self._last_positive = -1

    def set_weights(self, weights: np.ndarray | None) -> None:
        """Set the weights (VPS) of the weighted part; None or all-zero means uniform with replacement.

        Raises:
            ValueError: if the weights have the wrong size or hold negative / non-finite values.
        """
        if weights is None:
            self._cdf = None
            return
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (self.pool_size,) or weights.min() < 0:
            raise ValueError(
                f"sampler weights must be {self.pool_size} values >= 0, got shape {weights.shape}: "
                "this is a bug in the VPS computation"
            )
        cdf = np.cumsum(weights)
        if not np.isfinite(cdf[-1]):
            raise ValueError("sampler weights hold NaN or inf: this is a bug in the VPS computation")
        if cdf[-1] <= 0:
            self._cdf = None
            return
        self._cdf = cdf
        # The last index where the cumulative weight still rises, i.e. the last positive weight.
        self._last_positive = int(np.searchsorted(cdf, cdf[-1], side="left"))

    def weighted_count(self, batch_size: int) -> int:
        """k = floor(lambda * B), guarded against float error (0.29 * 100 must give 29)."""
        return math.floor(round(self.mixture_ratio * batch_size, 9))

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw one batch.

        Takes:
            batch_size: B >= 1.
        Returns:
            (indices int64 [B], from_weights bool [B]).
        """
        k = self.weighted_count(batch_size)
        weighted = self._weighted(k)
        uniform = self._uniform(batch_size - k)
        # Bresenham spread: slot i is weighted iff floor((i + 1) k / B) > floor(i k / B).
        slots = np.arange(batch_size + 1, dtype=np.int64) * k // batch_size
        from_weights = slots[1:] > slots[:-1]
        out = np.empty(batch_size, dtype=np.int64)
        out[from_weights] = weighted
        out[~from_weights] = uniform
        return out, from_weights

    def _weighted(self, k: int) -> np.ndarray:
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        if self._cdf is None:
            return self.rng.integers(0, self.pool_size, size=k, dtype=np.int64)
        u = self.rng.random(k) * self._cdf[-1]
        # side="right": the first index whose cumulative weight exceeds u, never a zero-weight index.
        idx = np.searchsorted(self._cdf, u, side="right")
        return np.minimum(idx, self._last_positive).astype(np.int64)

    def _uniform(self, m: int) -> np.ndarray:
        out = np.empty(m, dtype=np.int64)
        filled = 0
        n = self.pool_size
        perm = self.perm
        while filled < m:
            if self.cursor == n:
                self.cursor = 0
                self.passes += 1
            c = self.cursor
            take = min(m - filled, n - c)
            targets = self.rng.integers(np.arange(c, c + take), n).tolist()
            for i, j in zip(range(c, c + take), targets):
                perm[i], perm[j] = perm[j], perm[i]
            out[filled : filled + take] = perm[c : c + take]
            filled += take
            self.cursor = c + take
        return out

    def state_dict(self) -> dict:
        """Generator state, permutation and cursor (the weights belong to the VPS table)."""
        return {
            "pool_size": self.pool_size,
            "rng": self.rng.bit_generator.state,
            "perm": torch.from_numpy(self.perm.copy()),
            "cursor": self.cursor,
            "passes": self.passes,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict; weights must be set again with set_weights.

        Raises:
            ValueError: if the pool size differs.
        """
        if int(state["pool_size"]) != self.pool_size:
            raise ValueError(
                f"sampler state is for {state['pool_size']} prompts but the pool has {self.pool_size}: "
                "resume with the same dataset"
            )
        self.rng.bit_generator.state = state["rng"]
        self.perm = state["perm"].numpy().copy()
        self.cursor = int(state["cursor"])
        self.passes = int(state["passes"])
