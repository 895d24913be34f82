"""Weight sync with engines placed per node ("fanout"): 4 ranks laid out as 2 nodes x 2, each node's local
rank 0 holding its own engine (the in-process local engine stands for that node's engines). After every
sync, both engines hold exactly the actor's HF export, at TP2, PP2, TP2xPP2 and DP4."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.tiny import save_tiny_model, tiny_vl_batch
from tests.distributed import sync_workers

pytestmark = pytest.mark.distributed
LAYOUTS = list(sync_workers.FANOUT_LAYOUTS)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fanout")
    actor, engine = root / "actor", root / "engine"
    hf = save_tiny_model(actor, seed=21, model_type="qwen2_5_vl")
    save_tiny_model(engine, seed=22, model_type="qwen2_5_vl")
    batch = tiny_vl_batch(hf.config, seed=int(torch.randint(0, 10_000, ()).item()))
    results = run_on_ranks(
        sync_workers.sync_fanout_into_node_engines,
        4,
        str(actor),
        str(engine),
        str(root / "out"),
        batch,
        LAYOUTS,
        nodes=2,
    )
    return root, results


def _export(root, layout, version):
    out = {}
    for f in sorted((root / "out" / layout / version).glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_node_engine_holds_the_actor_export_after_each_sync(run, layout):
    root, results = run
    holders = [r for r in results if r["holder"]]
    assert [r["rank"] for r in holders] == [0, 2]  # local rank 0 of each node
    for version in ("0", "1"):
        ref = _export(root, layout, f"v{version}")
        for r in holders:
            got = r[layout][f"state{version}"]
            assert set(got) == set(ref)
            assert all(torch.equal(got[n], ref[n]) for n in ref), (r["rank"], version)
    before, after = _export(root, layout, "v0"), _export(root, layout, "v1")
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the step changed the weights


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_sync_reports_fanout_and_both_engines_verified(run, layout):
    _, results = run
    for r in results:
        for m in (r[layout]["metrics0"], r[layout]["metrics1"]):
            assert m["mode"] == "fanout" and m["verified_engines"] == 2
            assert not any(m["verify"].values())
            assert m["bytes"] > 0 and m["tensors"] > 0
            # per engine client (one per node): each was given every byte of the model, once
            assert len(m["engines"]) == 2 and {e["bytes"] for e in m["engines"]} == {m["bytes"]}
            assert all(e["seconds"] > 0 for e in m["engines"])
