"""The Figure-3 plot tool writes a PNG from saved VAS states."""

import numpy as np
import pytest
import torch

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.controller import VarianceAwareSampler
from mmr1_mega.vas.metrics import bin_transitions
from mmr1_mega.vas.plot import load_snapshots, main
from tests.vas.conftest import IndexScorer


def test_plot_tool_writes_png_from_a_saved_checkpoint(tmp_path):
    vas = VarianceAwareSampler(40, VASConfig(update_every_steps=2, progress=False))
    for _ in range(7):
        vas.next_indices(4, IndexScorer())
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "vas": vas.state_dict()}, path)
    out = tmp_path / "fig" / "vas.png"
    assert main([str(path), "--out", str(out), "--bins", "5"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert [s for s, _ in load_snapshots([path])] == [0, 2, 4, 6]


def test_plot_tool_rejects_a_file_without_vas_state(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="no VAS state"):
        main([str(path), "--out", str(tmp_path / "x.png")])


def test_bin_transitions_count_moves_between_bins():
    before = np.array([0.05, 0.05, 0.55, 0.95])
    after = np.array([0.05, 0.95, 0.45, 1.0])
    m = bin_transitions(before, after, 2)
    np.testing.assert_array_equal(m, [[1, 1], [1, 1]])
