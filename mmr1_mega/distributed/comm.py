"""Which device a collective uses, and how phases that only rank 0 works in end.

The rule (every rank-0-only phase of the trainer follows it):

    A phase in which only rank 0 works (building datasets and engines, the VAS refresh, rollouts and
    rewards, validation, writing the trainer state of a checkpoint) is entered by every rank through
    `rank0_phase`. Rank 0 runs it; the others wait in ONE broadcast on the host group (gloo, CPU objects,
    timeout `train.rank0_phase_timeout_s`, sized for the longest such phase), never in a collective of the
    actor's backend (NCCL, whose timeout `train.collective_timeout_s` is sized for lockstep work). The
    broadcast carries rank 0's result or its error: a failure on rank 0 is raised on every rank at once.
    A failure on another rank ends that process, and the launcher (torchrun, or `launch.run_on_ranks`)
    stops the others.

Tensors given to a collective live on `comm_device(group)`: the current CUDA device for NCCL, the CPU for
gloo (NCCL rejects CPU tensors; gloo on CPU handles both).
"""

from __future__ import annotations

import datetime
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mmr1_mega.distributed import cpu

T = TypeVar("T")
DEFAULT_RANK0_PHASE_TIMEOUT_S = 3 * 3600.0


class Rank0PhaseError(RuntimeError):
    """Rank 0 failed in a rank-0-only phase; raised on every other rank with rank 0's message."""


def comm_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """The device a tensor must be on for a collective on `group` (default: the world)."""
    backend = dist.get_backend(group)
    if str(backend).lower() == "nccl":
        return cpu.device()
    return torch.device("cpu")


_host: dict[str, Any] = {"group": None, "world": None, "timeout_s": DEFAULT_RANK0_PHASE_TIMEOUT_S}


def set_rank0_phase_timeout(timeout_s: float) -> None:
    """The host group's timeout (seconds); takes effect when the group is (re)made. Call before the first
    rank0_phase of a run, identically on every rank."""
    if timeout_s <= 0:
        raise ValueError(f"rank-0 phase timeout must be > 0, got {timeout_s}")
    if timeout_s != _host["timeout_s"]:
        _host["timeout_s"] = float(timeout_s)
        _host["group"] = None


def host_group() -> dist.ProcessGroup:
    """A gloo group of every rank for CPU objects and rank-0 phases (collective the first time it is
    asked for in a process group; every rank asks at the same point, in rank0_phase)."""
    world = dist.group.WORLD
    if _host["group"] is None or _host["world"] is not world:
        _host["group"] = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=_host["timeout_s"])
        )
        _host["world"] = world
    return _host["group"]


def rank0_phase(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run fn(*args, **kwargs) on rank 0 only and return its result on every rank (the module's rule).

    Raises on rank 0 whatever fn raised; on the other ranks Rank0PhaseError naming the phase and the error.
    The result must be picklable.
    """
    rank = dist.get_rank()
    error: BaseException | None = None
    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - every failure must reach the other ranks
            error = e
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            box[0] = ("error", last)
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0, group=host_group())
    status, value = box[0]
    if status == "error":
        if error is not None:
            raise error
        raise Rank0PhaseError(f"rank 0 failed in phase {name!r}: {value}")
    return value


def leaders_phase(name: str, fn: Callable[[], T], leader: bool) -> list[T | None]:
    """Run fn() on every rank where `leader` is true (e.g. each node's local rank 0 starting that node's
    engines) and give every rank the list of results in rank order (None for the others). Waits on the host
    group like rank0_phase; a failure on any leader is raised on every rank (the leader's own error there,
    Rank0PhaseError naming the rank elsewhere)."""
    box: Any = None
    error: BaseException | None = None
    if leader:
        try:
            box = ("ok", fn())
        except BaseException as e:  # noqa: BLE001 - every failure must reach the other ranks
            error = e
            box = ("error", traceback.format_exception_only(type(e), e)[-1].strip())
    everyone: list[Any] = [box]
    if dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, box, group=host_group())
    failed = [(r, b[1]) for r, b in enumerate(everyone) if b is not None and b[0] == "error"]
    if failed:
        if error is not None:
            raise error
        raise Rank0PhaseError(f"rank {failed[0][0]} failed in phase {name!r}: {failed[0][1]}")
    return [b[1] if b is not None else None for b in everyone]
