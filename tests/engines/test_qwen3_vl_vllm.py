"""Qwen3-VL into a real vLLM 0.32 CPU server: weight sync from TP=2 and PP=2 actors (before and after an
optimizer step; names as Qwen3-VL checkpoints have them, which vLLM's Qwen3-VL loader maps), then the
engine's greedy continuations and log-probs equal transformers on the actor's export, text and image prompts."""

from __future__ import annotations

import pytest

from tests.engines.conftest import make_engine, make_server, save_engine_model
from tests.engines.test_engines import _hf, assert_greedy_equal, assert_logprobs_equal
from tests.engines.test_sync_real_engines import LAYOUTS, NEW_TOKENS, sync_and_serve

pytestmark = [pytest.mark.engine, pytest.mark.distributed]


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen3-vl-vllm-model")
    save_engine_model(d, seed=0, family="qwen3_vl")
    engine = make_engine("vllm", [make_server("vllm", d, d)]).launch()
    try:
        yield sync_and_serve("vllm", engine, d, tmp_path_factory.mktemp("sync-qwen3"), family="qwen3_vl")
    finally:
        engine.shutdown()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("version", ["v0", "v1"])
def test_qwen3_vl_engine_continuations_equal_transformers_on_the_actor_export(synced, layout, version):
    hf = _hf(synced["root"] / "out" / layout / version)
    assert hf.config.model_type == "qwen3_vl"
    assert any(p["images"] for p in synced["prompts"])
    for p, (tokens, logprobs) in zip(synced["prompts"], synced["rank0"][layout][version]):
        assert_greedy_equal(hf, p, tokens, NEW_TOKENS)
        assert_logprobs_equal(hf, p, tokens, logprobs)
