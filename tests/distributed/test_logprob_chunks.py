"""token_logprobs in chunks over the sequence: the same values and gradients as in one piece, at TP1 and
TP2, and a peak memory that does not grow with sequence x vocabulary."""

from __future__ import annotations

import math

import pytest
import torch

from mmr1_mega.distributed.launch import run_on_ranks
from tests.distributed import logprob_workers
from tests.tolerances import FP32_EPS

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_and_gradients_equal_the_whole_computation(tp, temperature, dtype):
    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    b, s, v = 3, 37, 256
    logits = (3 * torch.randn(b, s, v, generator=g)).to(dtype)
    ids = torch.randint(0, v, (b, s), generator=g)
    chunk_mb = 5 * b * (v // tp) * 4 / 2**20  # 5 positions per chunk: 8 chunks, the last one short
    outs = run_on_ranks(logprob_workers.chunked_vs_whole, tp, tp, logits, ids, temperature, chunk_mb)
    # each position's log-softmax is the same arithmetic in both; the reductions over the vocabulary may
    # run in another order: error <= log2(v) * u relative to the logits' scale (pairwise sums)
    scale = 1 + logits.float().abs().max().item() / temperature
    atol = 4 * math.log2(v) * FP32_EPS * scale
    for out in outs:
        (lp_c, gr_c), (lp_w, gr_w) = out["chunked"], out["whole"]
        torch.testing.assert_close(lp_c, lp_w, atol=atol, rtol=0)
        grad_atol = atol if dtype == torch.float32 else 2 * 2.0**-8 * gr_w.float().abs().max().item()
        torch.testing.assert_close(gr_c.float(), gr_w.float(), atol=grad_atol, rtol=0)


def test_peak_memory_of_chunked_logprobs_does_not_grow_with_sequence_times_vocab():
    shape = (2, 1024, 32000)  # bf16 logits: 131 MB; one fp32 copy of them 262 MB
    fp32_copy_gb = math.prod(shape) * 4 / 1e9
    [whole] = run_on_ranks(logprob_workers.peak_memory, 1, shape, torch.bfloat16, float("inf"))
    [chunked] = run_on_ranks(logprob_workers.peak_memory, 1, shape, torch.bfloat16, 16.0)
    # one piece keeps at least the fp32 softmax for backward and makes the fp32 gradient
    assert whole > 1.5 * fp32_copy_gb, (whole, fp32_copy_gb)
    # in chunks: the bf16 input gradient (half an fp32 copy) plus a few chunks of 16 MB, whatever the length
    assert chunked < 0.5 * fp32_copy_gb + 0.15, (chunked, fp32_copy_gb)
