"""Run a function on N local ranks (gloo on CPU), for tools and tests that are not started by torchrun.

Under torchrun (WORLD_SIZE set) the function simply runs in this process. Otherwise N processes are
forked from this one, so that the parent's imports (megatron-core takes ~7 s) are shared, and the
function's return value of each rank comes back in a list. A failure on any rank is re-raised here with
that rank's traceback; a rank that dies without reporting (a signal, os._exit, the OOM killer, a crash in a
library's background thread that ends the process) is noticed within a second, so the other ranks, which
may be blocked in a collective waiting for it, are killed instead of hanging until the timeout.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import time
import traceback
from collections.abc import Callable
from typing import Any

from mmr1_mega.distributed.init import free_port


class RankFailed(RuntimeError):
    """A rank raised; the message carries its traceback."""


def _worker(
    rank: int, world: int, port: int, fn: Callable, args: tuple, kwargs: dict, queue, nodes: int = 1
) -> None:
    per_node = world // nodes  # "nodes" on one machine: what torchrun would set on each node
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank % per_node),
        GROUP_RANK=str(rank // per_node),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(per_node),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        import torch

        torch.set_num_threads(1)
        # plain pickle copies tensors by value: torch's shared-memory reductions would need this
        # process alive when the parent unpickles
        result = pickle.dumps(fn(*args, **kwargs))
        import torch.distributed as dist

        if dist.is_initialized():  # no rank tears its groups down while a peer may still read from them
            dist.barrier()
        queue.put((rank, True, result))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        queue.put((rank, False, traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


def _dead_rank(procs: list, results: dict) -> tuple[int, str] | None:
    """(rank, message) of a rank whose process ended abnormally without reporting, else None. A rank that
    reports (success or a caught exception) exits with code 0, so a non-zero exit code means it died."""
    for rank, p in enumerate(procs):
        if rank not in results and p.exitcode not in (None, 0):
            how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
            return rank, f"the rank's process ended with {how} without reporting a result or a traceback"
    return None


def _forward_stop_signals(procs: list) -> dict:
    """While the ranks run, pass SIGTERM / SIGUSR1 sent to this process on to them (as torchrun does), so
    they can checkpoint and stop (distributed/signals.py). Returns the handlers to restore."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def forward(signum, frame):
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    return {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}


def _restore(handlers: dict) -> None:
    import signal

    for s, h in handlers.items():
        signal.signal(s, h)


def check_fork_safe() -> None:
    """Raise RuntimeError when CUDA is initialised in this process: CUDA cannot be used in processes
    forked after that. (torch.cuda.is_available / device_count may be asked first: with
    PYTORCH_NVML_BASED_CUDA_CHECK=1, set when mmr1_mega is imported, torch answers them through NVML.)
    """
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError(
            "CUDA is already initialised in the process that forks the ranks: ask CUDA questions (device "
            "names, memory, tensors on the GPU) inside the rank function, or start the ranks with torchrun"
        )


def run_on_ranks(
    fn: Callable, world_size: int, *args: Any, timeout_s: float = 900, nodes: int = 1, **kwargs: Any
) -> list:
    """Run fn(*args, **kwargs) on world_size forked ranks; returns the per-rank results in rank order.

    nodes: lay the ranks out as this many "nodes" of world_size / nodes ranks (LOCAL_RANK, LOCAL_WORLD_SIZE
    and GROUP_RANK as torchrun sets them on each node), so multi-node code runs on one machine.
    Raises RankFailed with the first failing rank's traceback, or TimeoutError.
    fn must be importable (a module-level function) and its results picklable.
    """
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return [fn(*args, **kwargs)]
    if nodes < 1 or world_size % nodes:
        raise ValueError(f"{world_size} ranks cannot be laid out as {nodes} nodes of equal size")
    check_fork_safe()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, fn, args, kwargs, queue, nodes), daemon=False)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    forwarded = _forward_stop_signals(procs)
    results: dict[int, Any] = {}
    failure = None
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world_size and failure is None:
            try:
                rank, ok, value = queue.get(timeout=1.0)
            except queue_mod.Empty:
                failure = _dead_rank(procs, results)
                if failure is None and time.monotonic() > deadline:
                    raise TimeoutError(f"ranks did not finish within {timeout_s} s") from None
                continue
            if not ok:
                failure = (rank, value)
                break
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=5 if failure else 60)
            if p.is_alive():
                p.kill()
        _restore(forwarded)
    if failure is not None:
        raise RankFailed(f"rank {failure[0]} failed:\n{failure[1]}")
    return [results[r] for r in range(world_size)]
