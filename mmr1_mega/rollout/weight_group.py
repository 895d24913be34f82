"""The trainer's side of a disaggregated weight-update group: the trainer is rank 0, the engine's TP
workers join with rank_offset (SGLang's init_weights_update_group). Both sides must rendezvous the same
way: a TCP store at master_address:master_port, keys prefixed with the group name, then torch's process
group helper (SGLang's init_custom_process_group does exactly this on the engine side)."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


def open_weight_update_group(
    master_address: str,
    master_port: int,
    world_size: int,
    group_name: str,
    rank: int = 0,
    backend: str = "nccl",
    timeout_s: float = 600.0,
):
    """Join (rank 0: create) a process group outside the default world. Returns the group handle.

    Blocks until all world_size ranks joined; raises torch's DistBackendError / timeout otherwise.
    Needs torch.distributed's default group to be initialised in this process (the actor's is).
    """
    from torch.distributed.distributed_c10d import (
        Backend,
        PrefixStore,
        _new_process_group_helper,
        _world,
        rendezvous,
    )

    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(
        rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size, timeout=timeout)
    )
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    # private helper: the only way to build a group whose members are not ranks of the default world
    pg, _ = _new_process_group_helper(
        world_size,
        rank,
        [],
        Backend(backend),
        store,
        group_name=group_name,
        backend_options=None,
        timeout=timeout,
    )
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def broadcast_flat(bucket, group) -> int:
    """Broadcast a bucket from rank 0 of `group` as one flat uint8 buffer: the tensors' bytes back to
    back in bucket order, SGLang's flattened-bucket layout (FlattenedTensorBucket.empty on the
    receivers). Returns the bytes sent."""
    flat = torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for _, t in bucket])
    dist.broadcast(flat, src=0, group=group)
    return flat.numel()


def close_weight_update_group(group) -> None:
    """Destroy a group made by open_weight_update_group."""
    dist.destroy_process_group(group)
