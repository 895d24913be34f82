"""Every megatron-core CPU adaptation is still needed (its probe fails without it) and works."""

from __future__ import annotations

from pathlib import Path

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


def test_the_adaptations_this_megatron_version_needs_are_installed_without_cuda(report):
    assert set(report["active"]) == {a.name for a in cpu.ADAPTATIONS if cpu.needed_here(a)}


@pytest.mark.parametrize("name", [a.name for a in cpu.ADAPTATIONS])
def test_adaptation_is_needed_exactly_from_its_version(report, name):
    adaptation = next(a for a in cpu.ADAPTATIONS if a.name == name)
    if cpu.needed_here(adaptation):
        assert report[name]["without"] is not None, (
            f"megatron-core {cpu.megatron_version()} no longer needs the {name!r} adaptation on CPU: "
            "remove it from distributed/cpu.py (or raise its version range)"
        )
    else:
        assert report[name]["without"] is None, (
            f"megatron-core {cpu.megatron_version()} already needs {name!r} (its `since` says "
            f"{adaptation.since}): {report[name]['without']}"
        )


@pytest.mark.parametrize("name", [a.name for a in cpu.ADAPTATIONS])
def test_adaptation_makes_megatron_code_work(report, name):
    assert report[name]["with"] is None, report[name]["with"]


@pytest.mark.parametrize("name", [a.name for a in cpu.ADAPTATIONS])
def test_each_cited_megatron_line_holds_the_cited_text_in_the_installed_version(name):
    import megatron.core

    version = cpu.megatron_version()
    root = Path(megatron.core.__file__).parent
    adaptation = next(a for a in cpu.ADAPTATIONS if a.name == name)
    assert adaptation.covers
    for cite in adaptation.covers:
        lines = (root / cite.path).read_text().splitlines()
        found = [i + 1 for i, line in enumerate(lines) if cite.text in line]
        if not cpu.needed_here(adaptation):
            continue
        cited = cite.lines.get(version)
        if cited is None:  # a version the project was not checked against: the text must still be there
            assert found, f"{cite.path} no longer contains {cite.text!r} in megatron-core {version}"
        else:
            assert set(cited) <= set(found), f"{cite}: in {version} the text stands on lines {found}"
