"""Every parameter and buffer of a built model is on the rank's device (distributed.cpu.device())."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.build import tensors_off_device
from mmr1_mega.models.tiny import save_tiny_model

pytestmark = pytest.mark.distributed


def _off_device(hf_dir: str, pp: int) -> list[list[str]]:
    from transformers import AutoConfig

    from mmr1_mega.distributed.cpu import device
    from mmr1_mega.distributed.init import initialize_model_parallel
    from mmr1_mega.models.build import build_model

    initialize_model_parallel(1, pp)
    model, _ = build_model(AutoConfig.from_pretrained(hf_dir))
    return tensors_off_device(model, device())


def test_built_stages_hold_every_parameter_and_buffer_on_the_rank_device(tmp_path):
    save_tiny_model(tmp_path, seed=0)
    assert run_on_ranks(_off_device, 2, str(tmp_path), 2) == [[], []]


def test_tensors_left_on_another_device_are_named():
    # "meta" stands for a device the rank does not compute on (no second device on this machine)
    m = torch.nn.Linear(2, 2)
    m.register_buffer("rope_cache", torch.empty(3, device="meta"))
    assert tensors_off_device(m, torch.device("cpu")) == ["rope_cache (meta)"]
    assert tensors_off_device(m, torch.device("meta")) == ["weight (cpu)", "bias (cpu)"]
