"""Probes of the megatron-core code each CPU adaptation covers (run inside a forked rank)."""

from __future__ import annotations

import contextlib

import torch

from mmr1_mega.distributed import cpu
from mmr1_mega.distributed.init import initialize_model_parallel


def _rng_tracker():
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(77, force_reset_rng=True)
    before = torch.get_rng_state()
    with tensor_parallel.get_cuda_rng_tracker().fork():
        a = torch.rand(8)
    assert torch.equal(torch.get_rng_state(), before), "fork must restore the default RNG state"
    tensor_parallel.model_parallel_cuda_manual_seed(77, force_reset_rng=True)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        b = torch.rand(8)
    assert torch.equal(a, b), "the forked model-parallel stream must be reproducible from the seed"
    assert not torch.equal(a, torch.rand(8))


def _current_device():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding

    rope = MultimodalRotaryEmbedding(kv_channels=8, rotary_percent=1.0)
    emb = rope(torch.zeros(3, 1, 4, dtype=torch.long), [2, 1, 1])
    assert emb.shape == (4, 1, 1, 8) and emb.device.type == "cpu"


def _cuda_literals():
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
    from megatron.core.transformer.utils import get_default_causal_mask

    mask = get_default_causal_mask(3)
    assert torch.equal(mask, torch.triu(torch.ones(3, 3), 1).bool())
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)  # scales grads by 1/4
    assert torch.allclose(p.grad, torch.full((4,), 0.5), atol=1e-5)
    assert torch.ones(2).cuda().device.type == "cpu"


def _type_strings():
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.ones(4)
    clip_grad_by_total_norm_fp32([p], max_norm=10.0, total_norm=1.0)  # no scaling: only the type check
    assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.zeros(1).type(torch.float64).dtype == torch.float64


def _synchronize():
    torch.cuda.synchronize()


def _current_stream():
    # megatron's own gradient sync (DDP -> bucket group start_grad_sync), on a one-parameter model
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.transformer_config import TransformerConfig

    module = torch.nn.Linear(4, 1, bias=False)
    config = TransformerConfig(num_layers=1, hidden_size=4, num_attention_heads=1)
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(), module)
    ddp.zero_grad_buffer()
    ddp(torch.ones(3, 4)).sum().backward()
    ddp.finish_grad_sync()
    assert torch.equal(module.weight.main_grad, torch.full((1, 4), 3.0))


PROBES = {
    "rng_tracker": _rng_tracker,
    "current_device": _current_device,
    "cuda_literals": _cuda_literals,
    "type_strings": _type_strings,
    "synchronize": _synchronize,
    "current_stream": _current_stream,
}


def run_probes() -> dict:
    """For each adaptation: the probe's error without it (None if it passed) and with every installed
    adaptation (the same as without, for one this megatron-core version does not need)."""
    initialize_model_parallel(1, 1)
    report = {"active": cpu.active_adaptations()}
    for name, probe in PROBES.items():
        installed = name in report["active"]
        with cpu.without(name) if installed else contextlib.nullcontext():
            try:
                probe()
                without = None
            except Exception as e:  # noqa: BLE001
                without = f"{type(e).__name__}: {e}"
        try:
            probe()
            with_it = None
        except Exception as e:  # noqa: BLE001
            with_it = f"{type(e).__name__}: {e}"
        report[name] = {"without": without, "with": with_it}
    return report
