"""Each data-parallel rank gets its share of rank 0's step batch, as tensors.

Rank 0 holds the step's batch (rollouts, rewards, advantages, images). Data-parallel replica r trains on
rows r, r + dp, r + 2 dp, ... (RolloutBatch.select), and every rank of that replica (its tensor- and
pipeline-parallel peers: megatron's model-parallel group) needs the same rows. So:

1. rank 0 packs each replica's share into one flat uint8 buffer plus metadata (sync/buckets.pack) and
   sends it point to point to the replica's first rank (its own replica's share it keeps);
2. that rank broadcasts it within its model-parallel group.

No rank receives more than its replica's share, and rank 0 sends the batch once in all (not a pickled copy of
the whole batch, pixel values included, to every rank). Collectives run on the actor's backend
(comm_device: NCCL on GPUs); the small metadata travels as objects.
"""

from __future__ import annotations

from dataclasses import fields

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mmr1_mega.actor.batch import RolloutBatch
from mmr1_mega.distributed.comm import comm_device
from mmr1_mega.sync.buckets import pack, unpack

_leaders: dict = {"world": None, "by_replica": None}


def replica_leaders() -> dict[int, int]:
    """data-parallel rank -> global rank of the first rank of that replica's model-parallel group (asked of
    every rank once per process group: a collective)."""
    if _leaders["world"] is not dist.group.WORLD:
        mp = ps.get_model_parallel_group()
        mine = (ps.get_data_parallel_rank(), dist.get_global_rank(mp, 0))
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        _leaders.update(world=dist.group.WORLD, by_replica=dict(everyone))
    return _leaders["by_replica"]


def pack_batch(batch: RolloutBatch) -> tuple[torch.Tensor, dict]:
    """(buffer, header): every tensor field in one uint8 buffer; the header names the fields and holds the
    extras (small, picklable)."""
    tensors, absent = [], []
    for f in fields(batch):
        if f.name == "extras":
            continue
        v = getattr(batch, f.name)
        if v is None:
            absent.append(f.name)
        else:
            tensors.append((f.name, v))
    buffer, metas = pack(tensors)
    return buffer, {"metas": metas, "absent": absent, "extras": dict(batch.extras), "nbytes": buffer.numel()}


def unpack_batch(buffer: torch.Tensor, header: dict) -> RolloutBatch:
    """The RolloutBatch of pack_batch (its tensors are views of buffer, on the CPU)."""
    values = dict(unpack(buffer.cpu(), header["metas"]))
    values.update({name: None for name in header["absent"]})
    return RolloutBatch(**values, extras=dict(header["extras"]))


def scatter_batch(batch: RolloutBatch | None) -> RolloutBatch:
    """This rank's data-parallel share of `batch` (given on global rank 0, None elsewhere): the rows
    batch.select(range(dp_rank, len(batch), dp)), on every rank of that replica. Collective (every rank)."""
    leaders = replica_leaders()
    me, dp, dp_rank = dist.get_rank(), ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    dev = comm_device()
    buffer = header = None
    if me == 0:
        if batch is None:
            raise ValueError("scatter_batch: rank 0 must hold the batch")
        for r in range(dp):
            share = pack_batch(batch.select(range(r, len(batch), dp)))
            if leaders[r] == me:
                buffer, header = share
            else:
                dist.send_object_list([share[1]], dst=leaders[r])
                dist.send(share[0].to(dev), dst=leaders[r])
    elif me == leaders[dp_rank]:
        box = [None]
        dist.recv_object_list(box, src=0)
        header = box[0]
        buffer = torch.empty(header["nbytes"], dtype=torch.uint8, device=dev)
        dist.recv(buffer, src=0)
    mp = ps.get_model_parallel_group()
    if dist.get_world_size(mp) > 1:
        src = leaders[dp_rank]
        box = [header]
        dist.broadcast_object_list(box, src=src, group=mp)
        header = box[0]
        if me != src:
            buffer = torch.empty(header["nbytes"], dtype=torch.uint8, device=dev)
        buffer = buffer.to(dev)
        dist.broadcast(buffer, src=src, group=mp)
    return unpack_batch(buffer, header)
