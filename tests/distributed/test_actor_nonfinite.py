"""A non-finite loss or grad norm skips the update: weights and optimizer state stay as they were."""

from __future__ import annotations

import math

import pytest
import torch

from mmr1_mega.algo.config import GRPOLossConfig
from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.tiny import save_tiny_model
from tests.distributed import actor_workers
from tests.distributed.test_actor_resume import _batch

pytestmark = pytest.mark.distributed


def test_nan_step_is_skipped_and_the_next_step_trains(tmp_path):
    hf = save_tiny_model(tmp_path, seed=2)
    good = _batch(0, hf.config)
    bad = _batch(1, hf.config)
    first_response = bad.response_mask.nonzero()[0]
    bad.old_logp[first_response[0], first_response[1]] = float("nan")
    loss = GRPOLossConfig()
    [r0, _] = run_on_ranks(
        actor_workers.nonfinite_then_finite, 2, str(tmp_path), bad, good, loss, {"lr": 1e-3}
    )
    assert r0["bad"]["update_skipped"] == 1.0 and r0["bad"]["nonfinite_inputs"] > 0
    assert r0["unchanged"] and r0["opt_state_empty_after_bad"]
    assert r0["good"]["update_skipped"] == 0.0 and math.isfinite(r0["good"]["grad_norm"])
    assert r0["changed_after_good"]
    assert torch.isnan(bad.old_logp).any()
