"""Qwen3-VL into a real vLLM 0.32 and a real SGLang 0.5.23 CPU server: weight sync from TP=2 and PP=2 actors
(before and after an optimizer step; names as Qwen3-VL checkpoints have them, which both engines' Qwen3-VL
loaders map), then the engine's greedy continuations and log-probs equal transformers on the actor's export,
text and image prompts."""

from __future__ import annotations

import pytest

from tests.engines.conftest import make_engine, make_server, save_engine_model
from tests.engines.test_engines import _hf, assert_greedy_equal, assert_logprobs_equal
from tests.engines.test_sync_real_engines import LAYOUTS, NEW_TOKENS, sync_and_serve

pytestmark = [pytest.mark.engine, pytest.mark.distributed]


@pytest.fixture(scope="module", params=["vllm", "sglang"])
def synced(request, tmp_path_factory):
    kind = request.param
    d = tmp_path_factory.mktemp(f"qwen3-vl-{kind}-model")
    save_engine_model(d, seed=0, family="qwen3_vl")
    engine = make_engine(kind, [make_server(kind, d, d)]).launch()
    try:
        yield sync_and_serve(
            kind, engine, d, tmp_path_factory.mktemp(f"sync-qwen3-{kind}"), family="qwen3_vl"
        )
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
