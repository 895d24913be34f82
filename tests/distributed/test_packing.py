"""Packed sequences (several samples in one row, block-diagonal causal mask) give the same logits as the
right-padded batch, with and without tensor + sequence parallelism."""

from __future__ import annotations

import pytest

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.tiny import save_tiny_model, tiny_vl_batch
from tests.distributed import model_workers

pytestmark = pytest.mark.distributed


def test_packed_logits_equal_padded(tmp_path):
    hf = save_tiny_model(tmp_path, seed=4)
    batch = tiny_vl_batch(hf.config, seed=8)
    [diffs, _] = run_on_ranks(model_workers.padded_vs_packed, 2, str(tmp_path), batch, ["tp1", "tp2sp"])
    assert diffs["tp1"] < 1e-5 and diffs["tp2sp"] < 1e-5, diffs
