"""Stopping on a signal without losing work or leaving processes behind.

SLURM ends a job (time limit, preemption, scancel) with SIGTERM, after an optional early warning signal
(`#SBATCH --signal=USR1@300`); torchrun forwards both to its workers, and `launch.run_on_ranks` forwards them
to the ranks it forked. On every rank the first SIGTERM / SIGUSR1 only raises a flag; the trainer looks
at it between steps, where all ranks are in lockstep (`stop_requested_anywhere`), writes a checkpoint and
raises Preempted. A second SIGTERM raises Preempted at once, wherever the rank is: `finally` blocks still
run (engine servers are stopped), but no checkpoint is written, as the actor may be mid-step.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """The run was stopped by a signal (exit code 143, as a process killed by SIGTERM)."""

    def __init__(self, message: str):
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message


_state = {"signal": None, "installed": False}


def _handler(signum, frame) -> None:
    if _state["signal"] is not None and signum == signal.SIGTERM:
        raise Preempted(f"stopped by a second {signal.Signals(signum).name}")
    _state["signal"] = signum


def install_stop_handlers() -> None:
    """Route SIGTERM / SIGUSR1 to the stop flag (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or _state["installed"]:
        return
    for s in STOP_SIGNALS:
        signal.signal(s, _handler)
    _state["installed"] = True


def stop_signal() -> str | None:
    """The name of the signal that asked this process to stop, or None."""
    return None if _state["signal"] is None else signal.Signals(_state["signal"]).name


def stop_requested_anywhere(group: dist.ProcessGroup | None = None) -> bool:
    """Collective (a lockstep point): True on every rank when any rank was asked to stop."""
    from mmr1_mega.distributed.comm import host_group

    flag = torch.tensor([1 if _state["signal"] is not None else 0])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group or host_group())
    return bool(flag.item())
