"""The colocation hand-off of the actor (offload while the engine generates, onload to train) keeps
training exact: the same losses and weights, bit for bit, as without it (with and without the
distributed optimizer). That it frees accelerator memory only a GPU can show (scripts/gpu_check.sh);
here the gradient buffers are really freed and rebuilt."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.tiny import save_tiny_model
from tests.distributed import actor_workers
from tests.distributed.test_actor_resume import LOSS, OPTIM, _batch, _merge

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("layout", ["tp2-dp2", "tp2-dp2-distopt"])
def test_offload_and_onload_between_steps_change_nothing(tmp_path, layout):
    hf = save_tiny_model(tmp_path, seed=4)
    batches = [_batch(s, hf.config) for s in range(3)]
    run = actor_workers.steps_with_offload_between
    plain = _merge(run_on_ranks(run, 4, str(tmp_path), batches, LOSS, OPTIM, layout, False))
    handed = _merge(run_on_ranks(run, 4, str(tmp_path), batches, LOSS, OPTIM, layout, True))
    assert plain[0] == handed[0]
    assert set(plain[1]) == set(handed[1])
    assert all(torch.equal(plain[1][n], handed[1][n]) for n in plain[1])
