"""Runs inside the ranks of the chunked log-prob tests."""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from mmr1_mega.actor.actor import token_logprobs
from mmr1_mega.distributed.init import initialize_model_parallel


def chunked_vs_whole(tp: int, logits: torch.Tensor, ids: torch.Tensor, temperature: float, chunk_mb: float):
    """This TP rank's vocab slice of `logits`: log-probs and d(sum of weighted log-probs)/d logits, chunked
    and in one piece."""
    initialize_model_parallel(tp, 1)
    v = logits.shape[-1] // tp
    r = ps.get_tensor_model_parallel_rank()
    mine = logits[..., r * v : (r + 1) * v]
    weights = torch.linspace(-1, 1, ids.numel()).view(ids.shape)
    out = {}
    for name, mb in (("chunked", chunk_mb), ("whole", float("inf"))):
        x = mine.clone().requires_grad_()
        logp = token_logprobs(x, ids, temperature, chunk_mb=mb)
        (logp * weights).sum().backward()
        out[name] = (logp.detach(), x.grad)
    return out


def peak_memory(shape: tuple, dtype: torch.dtype, chunk_mb: float) -> float:
    """Peak anonymous memory (GB) above the inputs of one forward + backward of token_logprobs."""
    from mmr1_mega.distributed.memory import PhaseMemory

    initialize_model_parallel(1, 1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    ids = torch.randint(0, shape[-1], shape[:2], generator=g)
    mem = PhaseMemory(interval_s=0.005)
    with mem.phase("logprobs"):
        token_logprobs(logits, ids, 0.7, chunk_mb=chunk_mb).sum().backward()
    return mem.report()["logprobs"]["peak_anon_gb"] - mem.start_rss / 1e9
