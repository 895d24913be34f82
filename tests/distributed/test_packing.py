"""Packed sequences (several samples per row, block-diagonal causal mask) give the same logits as the
right-padded batch, with and without tensor + sequence parallelism."""

from __future__ import annotations

import pytest

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.tiny import save_tiny_model, tiny_vl_batch
from tests.distributed import model_workers
from tests.tolerances import fp32_forward_bound

pytestmark = pytest.mark.distributed


def test_packed_logits_equal_padded(tmp_path):
    hf = save_tiny_model(tmp_path, seed=4)
    batch = tiny_vl_batch(hf.config, seed=8)
    [diffs, _] = run_on_ranks(model_workers.padded_vs_packed, 2, str(tmp_path), batch, ["tp1", "tp2sp"])
    # the same model in another order (one packed row vs padded rows; masked attention sums over the row)
    bound = fp32_forward_bound(hf.config.text_config, int(batch["input_ids"].numel()))
    # two layouts x (one row; rows of the longest sample's width, two samples sharing one: 3 -> 2 rows)
    assert len(diffs) == 4 and sum("rows (2x" in k for k in diffs) == 2, sorted(diffs)
    for layout, (diff, scale) in diffs.items():
        assert diff <= bound * scale, f"{layout}: {diff:.3g} > {bound:.3g} x {scale:.3g}"
