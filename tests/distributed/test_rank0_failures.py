"""A failure in a phase only rank 0 works in reaches every rank as an error, at once (distributed/comm.py)."""

from __future__ import annotations

import pytest

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.tiny import save_tiny_model
from tests.distributed import actor_workers

pytestmark = pytest.mark.distributed


def test_a_checkpoint_rank0_cannot_write_fails_on_every_rank_fast_and_keeps_the_last_one(tmp_path):
    save_tiny_model(tmp_path / "hf", seed=2)
    optim = dict(lr=1e-3)
    out = run_on_ranks(
        actor_workers.checkpoint_when_rank0_cannot_write,
        2,
        str(tmp_path / "hf"),
        str(tmp_path / "run"),
        optim,
    )
    assert "pickle" in out[0]["error"].lower() or "lambda" in out[0]["error"]
    assert out[1]["error"].startswith("Rank0PhaseError: rank 0 failed in phase 'checkpoint: trainer state'")
    for r in out:
        # the other rank learns within seconds, not after a collective timeout (30 min by default)
        assert r["seconds"] < 60
        assert r["complete"] == ["step_000001"]
