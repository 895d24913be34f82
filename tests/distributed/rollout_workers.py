"""Code that runs inside the ranks of the rollout tests (forked by mmr1_mega.distributed.launch)."""

from __future__ import annotations

import torch.distributed as dist

from mmr1_mega.distributed.init import init_process_group
from mmr1_mega.rollout.sglang_payloads import update_from_distributed_payload
from mmr1_mega.rollout.weight_group import broadcast_flat, close_weight_update_group, open_weight_update_group


def disaggregated_update(port: int, buckets: list) -> list:
    """Rank 0 plays the trainer's stage leader; rank 1 an SGLang TP worker, receiving each bucket with
    SGLang's own code (FlattenedTensorBucket.empty from the names / dtypes / shapes the adapter
    announces, one broadcast, reconstruct_tensors). Rank 1 returns what it rebuilt."""
    from tests.rollout.sglang_source import load_tensor_bucket_module

    init_process_group()
    rank = dist.get_rank()
    group = open_weight_update_group(
        "127.0.0.1", port, 2, "mmr1_weight_update_stage0", rank=rank, backend="gloo"
    )
    received = []
    for bucket in buckets:
        if rank == 0:
            broadcast_flat(bucket, group)
        else:
            body = update_from_distributed_payload(bucket)  # what the receiver is told over HTTP
            tb = load_tensor_bucket_module()
            recv = tb.FlattenedTensorBucket.empty(body["names"], body["dtypes"], body["shapes"], "cpu")
            dist.broadcast(recv.get_flattened_tensor(), src=0, group=group)
            received.append([(n, t.clone()) for n, t in recv.reconstruct_tensors()])
    close_weight_update_group(group)
    return received
