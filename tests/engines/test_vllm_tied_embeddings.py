"""A model whose lm_head is tied to its embeddings (Qwen2.5-VL-3B, the demo) served by the real vLLM 0.32 CPU
server through the trainer's factory follows weight updates: vLLM's CPU build packs a tied lm_head once and
its in-place reload never repacks it, so the factory serves an untied copy and every update carries the
embedding as lm_head.weight too (rollout/vllm.py `untied_copy`). Before that, log-probs after one update
were 1.4 away from transformers on the new weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mmr1_mega.config import RolloutConfig
from mmr1_mega.rollout.factory import make_engine
from tests.engines.conftest import engine_python, save_engine_model
from tests.engines.test_engines import (
    _hf,
    _processor,
    _prompts,
    _request,
    assert_greedy_equal,
    assert_logprobs_equal,
)

pytestmark = pytest.mark.engine
NEW_TOKENS = 8


def test_a_tied_model_on_vllm_cpu_follows_every_weight_update(tmp_path):
    start, new = tmp_path / "start", tmp_path / "new"
    save_engine_model(start, seed=0, tie=True)
    save_engine_model(new, seed=1, tie=True)  # same shapes, other weights (its file holds no lm_head)
    assert "lm_head.weight" not in load_file(new / "model.safetensors")
    cfg = RolloutConfig(
        engine="vllm",
        server_launcher=[engine_python("vllm"), "-m", "vllm.entrypoints.openai.api_server"],
        server_args=["--max-model-len", "1024"],
        server_timeout_s=300,
    )
    os.environ.setdefault("TMPDIR", str(tmp_path))
    engine = make_engine(cfg, start, device="cpu", dtype="fp32")
    served = Path(engine.servers[0].model_path)
    try:
        assert served != start and not json.loads((served / "config.json").read_text())["tie_word_embeddings"]
        prompts = _prompts(_processor(start))
        requests = [_request(p, temperature=0.0, max_new_tokens=NEW_TOKENS) for p in prompts]
        for model in (start, new):
            if model is new:
                engine.begin_update()
                engine.update_weights(list(load_file(new / "model.safetensors").items()))
                engine.end_update()
            hf = _hf(model)
            for p, out in zip(prompts, engine.generate(requests)):
                assert_greedy_equal(hf, p, out[0].token_ids, NEW_TOKENS)
                assert_logprobs_equal(hf, p, out[0].token_ids, out[0].logprobs)
    finally:
        engine.shutdown()
    assert not served.exists()  # the copy goes with the engine
