"""Process group and megatron parallel_state set-up (nccl on GPU, gloo on CPU)."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from mmr1_mega.distributed import cpu


def init_process_group(timeout_s: int = 1800) -> None:
    """Initialise torch.distributed from the torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    A single process started without torchrun gets a world of one on a free local port.
    Uses nccl when CUDA is present, gloo otherwise; a no-op if already initialised.
    """
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    backend = "gloo" if cpu.cuda_absent() else "nccl"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def free_port() -> int:
    """An unused TCP port on localhost."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def initialize_model_parallel(
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    seed: int = 1234,
    timeout_s: int = 1800,
) -> None:
    """Set up megatron's parallel_state for a TP x PP layout (DP = world / (TP*PP)) and seed the RNGs.

    Raises ValueError when the world size is not a multiple of TP*PP. Re-initialises if a layout is
    already set (so one process group can test several layouts).
    """
    cpu.apply_cpu_adaptations()
    init_process_group(timeout_s)
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel as mtp

    world = dist.get_world_size()
    if world % (tensor_parallel * pipeline_parallel):
        raise ValueError(
            f"world size {world} is not a multiple of tensor_parallel x pipeline_parallel = "
            f"{tensor_parallel} x {pipeline_parallel}: launch {tensor_parallel * pipeline_parallel}*k processes"
        )
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=pipeline_parallel
    )
    torch.manual_seed(seed)
    mtp.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy() -> None:
    """Tear down parallel_state and the process group."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
