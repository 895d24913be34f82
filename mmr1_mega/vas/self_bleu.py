"""Self-BLEU of each response against the other responses of its prompt, vectorised over a chunk of prompts.

Each value equals NLTK's
``sentence_bleu(references=others, hypothesis=resp, weights=(1/n,)*n, smoothing_function=SmoothingFunction().method1)``
(nltk/translate/bleu_score.py: corpus_bleu, modified_precision, closest_ref_length, brevity_penalty,
SmoothingFunction.method1), to float rounding:

* p_k = sum over hypothesis k-grams of min(count, max count in any reference) / max(1, #hypothesis k-grams);
  a hypothesis shorter than k has no k-grams, so p_k = 0 / 1.
* If p_1 has numerator 0 (in particular an empty hypothesis) the score is 0.
* method1 replaces a zero numerator by epsilon (0.1): p_k = epsilon / denominator.
* Brevity penalty with the closest reference length r (ties broken toward the shorter reference):
  1 if len > r, else exp(1 - r / len).
* BLEU = BP * exp(sum_k w_k log p_k).
A response with no other response to compare against (N = 1) gets NaN: NLTK raises there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmr1_mega.vas.ngrams import PackedResponses, max_count_in_others, ngram_runs, pack_responses


def self_bleu_packed(
    packed: PackedResponses, max_order: int = 3, epsilon: float = 0.1, force_dense_grams: bool = False
) -> np.ndarray:
    """Self-BLEU-1..max_order (uniform weights, smoothing method1) of every response of a packed chunk.

    Takes:
        packed: responses of a chunk of prompts (ngrams.pack_responses).
        max_order: highest n-gram order; weights are 1/max_order each (3 = self-BLEU-123 of MMR1).
        epsilon: method1's epsilon (NLTK default 0.1).
        force_dense_grams: exercise the exact fallback n-gram keying (tests).
    Returns:
        float64 [R], NaN for responses whose prompt has a single response.
    """
    R = packed.n_responses
    L = packed.lengths
    numerators = np.zeros((max_order, R), dtype=np.float64)
    for n in range(1, max_order + 1):
        runs = ngram_runs(packed, n, force_dense_grams=force_dense_grams)
        clipped = np.minimum(runs.count, max_count_in_others(runs))
        numerators[n - 1] = np.bincount(runs.resp, weights=clipped, minlength=R)
    orders = np.arange(1, max_order + 1, dtype=np.int64)[:, None]
    denominators = np.maximum(1, L[None, :] - orders + 1).astype(np.float64)
    precisions = np.where(numerators == 0, (0.0 + epsilon) / denominators, numerators / denominators)
    weight = 1.0 / max_order
    log_mean = np.zeros(R, dtype=np.float64)
    for k in range(max_order):
        log_mean += weight * np.log(precisions[k])

    ref_len, has_ref = _closest_other_length(packed)
    safe_len = np.maximum(L, 1)
    bp = np.where(L > ref_len, 1.0, np.exp(1.0 - ref_len / safe_len))
    bleu = bp * np.exp(log_mean)
    bleu = np.where(numerators[0] == 0, 0.0, bleu)
    return np.where(has_ref, bleu, np.nan)


def _closest_other_length(packed: PackedResponses) -> tuple[np.ndarray, np.ndarray]:
    """NLTK closest_ref_length over the other responses: min by (|r - len|, r). Returns (r, has_any)."""
    R, n_max = packed.n_responses, packed.n_max
    L = packed.lengths
    # Lengths of the responses of each response's prompt, padded to n_max: [R, n_max].
    slot = packed.group_start[packed.prompt_of][:, None] + np.arange(n_max, dtype=np.int64)[None, :]
    in_prompt = slot < packed.group_start[packed.prompt_of + 1][:, None]
    other = in_prompt & (np.arange(n_max)[None, :] != packed.member[:, None])
    cand = L[np.minimum(slot, max(R - 1, 0))] if R else np.zeros((0, n_max), dtype=np.int64)
    scale = 2 * (int(L.max()) + 1) if R else 1
    key = np.abs(cand - L[:, None]) * scale + cand
    key = np.where(other, key, np.iinfo(np.int64).max)
    best = np.argmin(key, axis=1) if R else np.zeros(0, dtype=np.int64)
    ref_len = np.take_along_axis(cand, best[:, None], axis=1)[:, 0] if R else np.zeros(0, dtype=np.int64)
    return ref_len, other.any(axis=1)


def self_bleu(
    groups: Sequence[Sequence[Sequence[int]]], max_order: int = 3, epsilon: float = 0.1
) -> list[np.ndarray]:
    """Self-BLEU of every response of every prompt (see the module docstring for the exact definition).

    Takes:
        groups: per prompt, its responses as token-id sequences (possibly empty).
        max_order: highest n-gram order (3 = self-BLEU-123).
        epsilon: method1 epsilon.
    Returns:
        per prompt a float64 array of its responses' self-BLEU (NaN if the prompt has one response).
    """
    packed = pack_responses(groups)
    flat = self_bleu_packed(packed, max_order=max_order, epsilon=epsilon)
    return [flat[packed.group_start[p] : packed.group_start[p + 1]] for p in range(packed.n_prompts)]
