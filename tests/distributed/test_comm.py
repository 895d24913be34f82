"""Collectives take tensors on their backend's device; gloo (this machine) takes the CPU."""

from __future__ import annotations

import pytest

from mmr1_mega.distributed.launch import run_on_ranks

pytestmark = pytest.mark.distributed


def _devices() -> dict:
    import torch.distributed as dist

    from mmr1_mega.distributed.comm import comm_device, host_group
    from mmr1_mega.distributed.init import init_process_group

    init_process_group()
    return {
        "world": str(comm_device()),
        "host": str(comm_device(host_group())),
        "host_backend": str(dist.get_backend(host_group())),
    }


def test_gloo_groups_take_cpu_tensors_and_the_host_group_is_gloo():
    out = run_on_ranks(_devices, 2)
    assert out == [{"world": "cpu", "host": "cpu", "host_backend": "gloo"}] * 2
