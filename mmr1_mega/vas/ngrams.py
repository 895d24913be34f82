"""Pack the variable-length responses of a chunk of prompts and count their n-grams with one numpy sort.

Every n-gram occurrence gets an exact int64 key (prompt, n-gram, response-within-prompt); one sort of those
keys yields, as runs of equal keys, the count of each n-gram in each response, grouped by (prompt, n-gram).
This replaces the per-response Python Counters of NLTK (see self_bleu.py) by O(T log T) numpy work per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_INT64_MAX = (1 << 63) - 1
# Token ids below this bound are made dense with a lookup table (O(T + max id)) instead of a sort.
_LOOKUP_MAX_ID = 1 << 24


@dataclass
class PackedResponses:
    """The responses of a chunk of prompts, concatenated.

    Fields:
        tokens: int64 [T] dense token ids in [0, vocab).
        vocab: number of distinct token ids in the chunk (at least 1).
        lengths, starts: int64 [R] length and offset in `tokens` of each response.
        prompt_of, member: int64 [R] chunk-local prompt of each response and its index within the prompt.
        group_start: int64 [P + 1] index of each prompt's first response (responses of a prompt are contiguous).
        n_max: the largest number of responses of one prompt (at least 1).
        token_end, token_prompt, token_member: int64 [T] per token, the end offset of its response, its
            response's prompt and member index (precomputed once, used by every n-gram order).
    """

    tokens: np.ndarray
    vocab: int
    lengths: np.ndarray
    starts: np.ndarray
    prompt_of: np.ndarray
    member: np.ndarray
    group_start: np.ndarray
    n_max: int
    token_end: np.ndarray
    token_prompt: np.ndarray
    token_member: np.ndarray

    @property
    def n_prompts(self) -> int:
        return len(self.group_start) - 1

    @property
    def n_responses(self) -> int:
        return len(self.lengths)


@dataclass
class NgramRuns:
    """Counts of each distinct n-gram in each response, sorted so one (prompt, n-gram) group is contiguous.

    Fields:
        resp: int64 [M] global response index of the run.
        group: int64 [M] id of the (prompt, n-gram) pair, non-decreasing.
        prompt: int64 [M] chunk-local prompt of the run.
        count: int64 [M] occurrences of the n-gram in that response (>= 1).
    """

    resp: np.ndarray
    group: np.ndarray
    prompt: np.ndarray
    count: np.ndarray


def pack_responses(groups: Sequence[Sequence[Sequence[int]]]) -> PackedResponses:
    """Concatenate the responses of several prompts and map their token ids to dense ids.

    Takes:
        groups: per prompt, its responses as token-id sequences (lists of ints or 1-D integer arrays).
    Returns:
        PackedResponses.
    Raises:
        ValueError: if a response is not a 1-D sequence of integers.
    """
    arrays: list[np.ndarray] = []
    counts = np.zeros(len(groups), dtype=np.int64)
    for p, responses in enumerate(groups):
        counts[p] = len(responses)
        for r in responses:
            a = np.asarray(r)
            if a.size == 0:
                a = np.zeros(0, dtype=np.int64)
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
                raise ValueError(
                    f"a response of prompt {p} is not a 1-D sequence of integer token ids "
                    f"(shape {a.shape}, dtype {a.dtype}): pass token ids, not text"
                )
            arrays.append(a.astype(np.int64, copy=False))
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    tokens, vocab = _dense_ids(flat)
    starts = np.zeros(len(arrays), dtype=np.int64)
    if len(arrays) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    group_start = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum(counts, out=group_start[1:])
    prompt_of = np.repeat(np.arange(len(groups), dtype=np.int64), counts)
    member = np.arange(len(arrays), dtype=np.int64) - group_start[prompt_of]
    resp_of_tok = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
    return PackedResponses(
        tokens=tokens,
        vocab=vocab,
        lengths=lengths,
        starts=starts,
        prompt_of=prompt_of,
        member=member,
        group_start=group_start,
        n_max=max(1, int(counts.max())) if len(counts) else 1,
        token_end=(starts + lengths)[resp_of_tok],
        token_prompt=prompt_of[resp_of_tok],
        token_member=member[resp_of_tok],
    )


def _dense_ids(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """Map arbitrary int64 token ids to 0..U-1 preserving equality; returns (ids, U)."""
    if flat.size == 0:
        return flat, 1
    lo, hi = int(flat.min()), int(flat.max())
    if lo >= 0 and hi < _LOOKUP_MAX_ID:
        present = np.zeros(hi + 1, dtype=np.int64)
        present[flat] = 1
        rank = np.cumsum(present) - 1
        return rank[flat], int(rank[-1]) + 1
    uniq, inverse = np.unique(flat, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), len(uniq)


def ngram_runs(packed: PackedResponses, n: int, force_dense_grams: bool = False) -> NgramRuns:
    """Count every distinct n-gram of every response, grouped by (prompt, n-gram).

    Takes:
        packed: the chunk (pack_responses).
        n: n-gram order >= 1; a response shorter than n has no n-grams.
        force_dense_grams: use the exact fallback that renumbers n-grams by sorting (normally taken only
            when prompts * vocab**n * n_max would overflow int64); exposed for tests.
    Returns:
        NgramRuns (empty arrays when no response has n tokens).
    """
    T = packed.tokens.size
    m = T - n + 1
    if m <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return NgramRuns(empty, empty, empty, empty)
    tok = packed.tokens
    # An n-gram starting at position i stays inside its response iff i + n <= end of that response.
    valid = np.arange(n, m + n, dtype=np.int64) <= packed.token_end[:m]
    U = packed.vocab
    P = packed.n_prompts
    # The member index takes the low bits of the key, so splitting a key is a shift and a mask.
    shift = max(0, int(packed.n_max - 1).bit_length())
    slots = 1 << shift
    if not force_dense_grams and P * U**n * slots <= _INT64_MAX:
        keys = tok[:m].copy()
        for k in range(1, n):
            keys *= U
            keys += tok[k : m + k]
        n_grams_space = U**n
    else:
        # Renumber (prefix id, next token) pairs densely, order by order: every id stays < T.
        keys = tok[:m].copy() if n == 1 else tok.copy()
        for k in range(1, n):
            pair = keys[: T - k] * U + tok[k:]
            _, keys = np.unique(pair, return_inverse=True)
            keys = keys.astype(np.int64).reshape(-1)
        keys = keys[:m].copy()
        n_grams_space = int(keys.max()) + 1
        if P * n_grams_space * slots > _INT64_MAX:
            raise ValueError(
                f"chunk too large to key n-grams exactly ({P} prompts, {T} tokens): lower vas.chunk_prompts"
            )
    # key = (prompt * space + gram) << shift | member, built in place.
    keys += packed.token_prompt[:m] * n_grams_space
    keys <<= shift
    keys |= packed.token_member[:m]
    keys = keys[valid]
    keys.sort()
    first = np.ones(keys.size, dtype=bool)
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    run_start = np.flatnonzero(first)
    count = np.empty(run_start.size, dtype=np.int64)
    np.subtract(run_start[1:], run_start[:-1], out=count[:-1])
    if run_start.size:
        count[-1] = keys.size - run_start[-1]
    run_key = keys[run_start]
    member = run_key & (slots - 1)
    group = run_key >> shift
    prompt = group // n_grams_space
    return NgramRuns(resp=packed.group_start[prompt] + member, group=group, prompt=prompt, count=count)


def max_count_in_others(runs: NgramRuns) -> np.ndarray:
    """For each run (response r, n-gram g of prompt p): the largest count of g in the other responses of p.

    This is NLTK's `max_counts` over references when the references are the other responses: if r holds the
    unique maximum of its group, the answer is the group's largest count strictly below it, else the maximum.
    Responses without g count 0.

    Takes:
        runs: NgramRuns of one order.
    Returns:
        int64 [M].
    """
    out = np.zeros_like(runs.count)
    if runs.count.size == 0:
        return out
    is_start = np.ones(runs.group.size, dtype=bool)
    np.not_equal(runs.group[1:], runs.group[:-1], out=is_start[1:])
    is_end = np.ones_like(is_start)
    is_end[:-1] = is_start[1:]
    # An n-gram found in one response only has count 0 in the others: only shared n-grams need work.
    shared = np.flatnonzero(~(is_start & is_end))
    if shared.size == 0:
        return out
    count, start = runs.count[shared], is_start[shared]
    gstart = np.flatnonzero(start)
    gidx = np.cumsum(start) - 1
    top1 = np.maximum.reduceat(count, gstart)[gidx]
    is_top = count == top1
    n_top = np.add.reduceat(is_top.astype(np.int64), gstart)[gidx]
    below = np.maximum.reduceat(np.where(is_top, 0, count), gstart)[gidx]
    out[shared] = np.where(is_top & (n_top == 1), below, top1)
    return out
