"""Trajectory diversity measures other than self-BLEU: distinct-n and mean pairwise normalised edit distance."""

from __future__ import annotations

import numpy as np

from mmr1_mega.vas.ngrams import PackedResponses, ngram_runs

# Pairs of responses processed together by the batched edit-distance DP (bounds memory to ~pairs * L ints).
_EDIT_PAIR_BATCH = 512


def distinct_n_packed(packed: PackedResponses, n: int) -> np.ndarray:
    """distinct-n per prompt: distinct n-grams over all its responses / all its n-gram occurrences (Li et al. 2016).

    Takes:
        packed: responses of a chunk of prompts.
        n: n-gram order.
    Returns:
        float64 [P] in [0, 1]; 0 for a prompt without any n-gram (all responses shorter than n).
    """
    P = packed.n_prompts
    runs = ngram_runs(packed, n)
    first_of_group = np.ones(runs.group.size, dtype=bool)
    np.not_equal(runs.group[1:], runs.group[:-1], out=first_of_group[1:])
    distinct = np.bincount(runs.prompt[first_of_group], minlength=P).astype(np.float64)
    total = np.bincount(packed.prompt_of, weights=np.maximum(0, packed.lengths - n + 1), minlength=P)
    return np.divide(distinct, total, out=np.zeros(P), where=total > 0)


def levenshtein_pairs(
    a_tokens: np.ndarray, a_len: np.ndarray, b_tokens: np.ndarray, b_len: np.ndarray
) -> np.ndarray:
    """Levenshtein distances (unit insert / delete / substitute) of many pairs at once.

    Row-wise DP, vectorised over pairs and columns: with t[j] = min(D[i-1][j] + 1, D[i-1][j-1] + (a_i != b_j))
    and t[0] = i, the row is D[i][j] = j + min_{k<=j}(t[k] - k), a running minimum (np.minimum.accumulate).

    Takes:
        a_tokens, b_tokens: int64 [K, La_max] / [K, Lb_max], padded with values that never match each other.
        a_len, b_len: int64 [K] true lengths.
    Returns:
        int64 [K] distances.
    """
    K, lb_max = b_tokens.shape
    cols = np.arange(lb_max + 1, dtype=np.int64)
    prev = np.broadcast_to(cols, (K, lb_max + 1)).copy()
    out = np.where(a_len == 0, b_len, 0)
    rows = np.arange(K)
    for i in range(1, int(a_len.max(initial=0)) + 1):
        cost = (a_tokens[:, i - 1 : i] != b_tokens).astype(np.int64)
        t = np.empty_like(prev)
        t[:, 0] = i
        np.minimum(prev[:, 1:] + 1, prev[:, :-1] + cost, out=t[:, 1:])
        t -= cols
        np.minimum.accumulate(t, axis=1, out=t)
        t += cols
        prev = t
        done = a_len == i
        if done.any():
            out[done] = prev[rows[done], b_len[done]]
    return out


def edit_distance_packed(packed: PackedResponses) -> np.ndarray:
    """Mean over response pairs of Levenshtein(a, b) / max(len a, len b) per prompt (0 for two empty responses).

    Takes:
        packed: responses of a chunk of prompts.
    Returns:
        float64 [P] in [0, 1]; 0 for a prompt with fewer than two responses.
    """
    P = packed.n_prompts
    ia, ib = [], []
    for p in range(P):
        lo, hi = packed.group_start[p], packed.group_start[p + 1]
        a, b = np.triu_indices(int(hi - lo), k=1)
        ia.append(a + lo)
        ib.append(b + lo)
    ia = np.concatenate(ia) if ia else np.zeros(0, dtype=np.int64)
    ib = np.concatenate(ib) if ib else np.zeros(0, dtype=np.int64)
    normalised = np.zeros(ia.size)
    # Sorting pairs by length keeps the padding of each batch small.
    order = np.argsort(np.maximum(packed.lengths[ia], packed.lengths[ib]), kind="stable")
    for s in range(0, order.size, _EDIT_PAIR_BATCH):
        sel = order[s : s + _EDIT_PAIR_BATCH]
        ra, rb = ia[sel], ib[sel]
        a_tok, a_len = _padded(packed, ra, pad=-1)
        b_tok, b_len = _padded(packed, rb, pad=-2)
        dist = levenshtein_pairs(a_tok, a_len, b_tok, b_len)
        denom = np.maximum(a_len, b_len)
        normalised[sel] = np.divide(dist, denom, out=np.zeros(sel.size), where=denom > 0)
    pair_prompt = packed.prompt_of[ia]
    n_pairs = np.bincount(pair_prompt, minlength=P)
    sums = np.bincount(pair_prompt, weights=normalised, minlength=P)
    return np.divide(sums, n_pairs, out=np.zeros(P), where=n_pairs > 0)


def _padded(packed: PackedResponses, resp: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    lens = packed.lengths[resp]
    width = max(1, int(lens.max(initial=0)))
    idx = packed.starts[resp][:, None] + np.arange(width)[None, :]
    inside = np.arange(width)[None, :] < lens[:, None]
    toks = np.where(
        inside,
        packed.tokens[np.minimum(idx, max(packed.tokens.size - 1, 0))] if packed.tokens.size else pad,
        pad,
    )
    return toks.astype(np.int64), lens
