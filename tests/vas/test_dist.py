"""Rank-0 VAS with broadcast: a real multi-process gloo group (spawned, no megatron import)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.controller import VarianceAwareSampler
from mmr1_mega.vas.dist import DistributedVAS
from tests.vas.conftest import IndexScorer

WORLD, POOL, BATCH, STEPS = 3, 50, 6, 10
CFG = dict(update_every_steps=3, chunk_prompts=8, progress=False, seed=7)


class FailingScorer(IndexScorer):
    def __call__(self, indices):
        raise OSError("disk full while scoring")


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        scorer = IndexScorer()
        dvas = DistributedVAS(POOL, VASConfig(**CFG))
        seq = [dvas.next_indices(BATCH, scorer).tolist() for _ in range(STEPS)]
        failing = DistributedVAS(POOL, VASConfig(**CFG))  # its first draw refreshes: rank 0's scorer fails
        try:
            failing.next_indices(BATCH, FailingScorer())
            error = None
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
        result = {
            "failed_refresh": error,
            "seq": seq,
            "score_calls": len(scorer.calls),
            "holds_vps": dvas.vas is not None,
            "state_keys": sorted(dvas.state_dict()),
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        # no rank tears its groups down while a peer may still be reading from it (gloo aborts then)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.distributed
def test_every_rank_gets_identical_indices_each_step(rank_results):
    for r in rank_results[1:]:
        assert r["seq"] == rank_results[0]["seq"]


@pytest.mark.distributed
def test_only_rank_zero_scores_and_holds_vps(rank_results):
    assert rank_results[0]["score_calls"] > 0 and rank_results[0]["holds_vps"]
    for r in rank_results[1:]:
        assert r["score_calls"] == 0 and not r["holds_vps"] and r["state_keys"] == []


@pytest.mark.distributed
def test_broadcast_sequence_equals_a_single_process_sampler(rank_results):
    local = VarianceAwareSampler(POOL, VASConfig(**CFG))
    expected = [local.next_indices(BATCH, IndexScorer()).tolist() for _ in range(STEPS)]
    assert rank_results[0]["seq"] == expected


@pytest.mark.distributed
def test_a_refresh_that_fails_on_rank_zero_raises_on_every_rank(rank_results):
    assert rank_results[0]["failed_refresh"] == "OSError: disk full while scoring"
    for r in rank_results[1:]:
        assert r["failed_refresh"].startswith(
            "Rank0PhaseError: rank 0 failed in phase 'VAS sample / refresh'"
        )
        assert "disk full while scoring" in r["failed_refresh"]
