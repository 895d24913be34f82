"""Engines placed per node, with real vLLM servers: 4 ranks laid out as 2 nodes x 2, each node's local rank 0
starting and feeding its own server (the trainer's start_node_engines and fan-out sync), rank 0 generating
through a client of both. After each sync (TP2 and PP2 actors, before and after a real optimizer step) both
servers hold the same weights (vLLM's own checksums), which changed with the step, and rank 0's greedy
continuations equal transformers on the actor's export; a killed server's requests go to the other node's."""

from __future__ import annotations

import pytest

from mmr1_mega.distributed.launch import run_on_ranks
from tests.engines import engine_workers
from tests.engines.conftest import engine_python, save_engine_model
from tests.engines.test_engines import _hf, _processor, _prompts, _request, assert_greedy_equal
from tests.engines.test_sync_real_engines import _train_batch

pytestmark = [pytest.mark.engine, pytest.mark.distributed]
LAYOUTS = ["tp2", "pp2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    python = engine_python("vllm")
    root = tmp_path_factory.mktemp("per-node")
    server, actor = root / "server", root / "actor"
    server.mkdir()
    actor.mkdir()
    save_engine_model(server, seed=0)
    save_engine_model(actor, seed=1)  # same shapes and tokenizer, other weights
    prompts = _prompts(_processor(actor))
    requests = [_request(p, temperature=0.0, max_new_tokens=6) for p in prompts]
    batch = _train_batch(prompts, _hf(actor).config.image_token_id)
    results = run_on_ranks(
        engine_workers.per_node_engines,
        4,
        python,
        str(server),
        str(actor),
        str(root / "out"),
        batch,
        requests,
        LAYOUTS,
        nodes=2,
        timeout_s=1200,
    )
    return root, prompts, results


def test_each_node_leader_starts_its_own_engine(run):
    _, _, results = run
    assert [r["holder"] for r in results] == [True, False, True, False]
    ports = [a["port"] for a in results[0]["addresses"]]
    assert len(ports) == 2 and len(set(ports)) == 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_nodes_engines_get_the_same_new_weights(run, layout):
    _, _, results = run
    v0, v1 = results[0][(layout, "v0")], results[0][(layout, "v1")]
    assert v0["mode"] == v1["mode"] == "fanout"
    for v in (v0, v1):
        a, b = v["checksums"]
        assert a == b and len(a) > 0  # node 0's and node 1's servers hold identical weights
    assert v0["checksums"][0] != v1["checksums"][0]  # the optimizer step reached both


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("version", ["v0", "v1"])
def test_rollouts_over_both_nodes_equal_transformers_on_the_export(run, layout, version):
    root, prompts, results = run
    hf = _hf(root / "out" / layout / version)
    for p, (ids, _) in zip(prompts, results[0][(layout, version)]["greedy"]):
        assert_greedy_equal(hf, p, ids, 6)


def test_a_dead_nodes_requests_are_served_by_the_other_node(run):
    root, prompts, results = run
    after, down = results[0]["after_kill"], results[0]["down"]
    assert down == [1]  # node 1's server is set aside
    hf = _hf(root / "out" / LAYOUTS[-1] / "v1")
    assert len(after) == 2 * len(prompts)
    for p, (ids, _) in zip(prompts * 2, after):
        assert_greedy_equal(hf, p, ids, 6)
