"""Every megatron-core CPU adaptation is still needed (its probe fails without it) and works."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.distributed import cpu
from mmr1_mega.distributed.launch import run_on_ranks
from tests.distributed import cpu_probes

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(torch.cuda.is_available(), reason="the adaptations exist for machines without CUDA"),
]


@pytest.fixture(scope="module")
def report():
    [rep] = run_on_ranks(cpu_probes.run_probes, 1)
    return rep


def test_every_adaptation_has_a_probe():
    assert {a.name for a in cpu.ADAPTATIONS} == set(cpu_probes.PROBES)


def test_all_adaptations_are_installed_without_cuda(report):
    assert set(report["active"]) == {a.name for a in cpu.ADAPTATIONS}


@pytest.mark.parametrize("name", [a.name for a in cpu.ADAPTATIONS])
def test_adaptation_is_still_needed(report, name):
    assert report[name]["without"] is not None, (
        f"megatron-core no longer needs the {name!r} adaptation on CPU: remove it from distributed/cpu.py"
    )


@pytest.mark.parametrize("name", [a.name for a in cpu.ADAPTATIONS])
def test_adaptation_makes_megatron_code_work(report, name):
    assert report[name]["with"] is None, report[name]["with"]


def test_each_adaptation_names_the_megatron_lines_it_covers():
    for a in cpu.ADAPTATIONS:
        assert a.covers and all(".py" in c for c in a.covers)
