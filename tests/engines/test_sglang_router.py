"""sglang-router (0.3.2, from the SGLang environment) in front of SGLang servers: generation through it equals
transformers on a real SGLang server, and the router's workers follow our servers' state (a restarted server,
stale until the next weight update, is taken out and put back after the update)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import requests
import torch

from mmr1_mega.distributed.init import free_port
from mmr1_mega.rollout.sglang import SGLangEngine
from mmr1_mega.rollout.sglang_server import SGLangRouter, SGLangServer
from tests.engines.conftest import engine_python, make_server
from tests.engines.test_engines import (
    _hf,
    _processor,
    _prompts,
    _request,
    assert_greedy_equal,
    assert_logprobs_equal,
)
from tests.rollout import sglang_source as S

pytestmark = pytest.mark.engine
FAKE = str(Path(__file__).parents[1] / "rollout" / "fake_sglang_server.py")


def _router(tmp_path) -> SGLangRouter:
    port = free_port()
    return SGLangRouter(
        "",
        port=port,
        launcher=[engine_python("sglang"), "-m", "sglang_router.launch_router"],
        log_path=str(tmp_path / f"router-{port}.log"),
    )


def test_generation_through_the_router_equals_transformers_on_a_real_server(engine_model, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(engine_model, d)
    engine = SGLangEngine(
        [make_server("sglang", d, tmp_path)], router=_router(tmp_path), timeout_s=300, request_timeout_s=300
    ).launch()
    try:
        hf, processor = _hf(d), _processor(d)
        prompts = _prompts(processor)
        got = dict(
            engine.generate_stream([_request(p, n=2, temperature=0.0, max_new_tokens=8) for p in prompts])
        )
        assert sorted(got) == [0, 1]
        for i, p in enumerate(prompts):
            for sample in got[i]:
                assert assert_greedy_equal(hf, p, sample.token_ids, 8) >= 1
                assert_logprobs_equal(hf, p, sample.token_ids, sample.logprobs)
        workers = engine.router.workers()
        assert list(workers) == [engine.servers[0].url]
    finally:
        engine.shutdown()
    assert engine.router.process is None and engine.servers[0].process is None


def test_the_routers_workers_are_the_fresh_servers(tmp_path):
    S.load_tensor_bucket_module()
    servers = [
        SGLangServer(
            str(tmp_path / "m"),
            port=free_port(),
            launcher=[sys.executable, FAKE],
            extra_args=["--record-dir", str(tmp_path)],
            log_path=str(tmp_path / f"fake-{k}.log"),
        )
        for k in range(2)
    ]
    engine = SGLangEngine(servers, router=_router(tmp_path), timeout_s=60, request_timeout_s=60).launch()
    try:
        reqs = [_fake_request(k) for k in range(4)]
        out = engine.generate(reqs)
        assert [o[0].token_ids[0] for o in out] == [r.prompt_ids[-1] + 1 for r in reqs]
        try:
            requests.post(servers[0].url + "/_die", json={}, timeout=5)
        except requests.RequestException:
            pass  # it exits without answering
        servers[0].process.wait(10)
        assert engine.restart_dead() == [0] and engine.stale == {0}
        assert set(engine.router.workers()) == {servers[1].url}  # the stale server is out
        assert all(len(o) == 2 for o in engine.generate(reqs))
        engine.begin_update()
        engine.update_weights([("model.norm.weight", torch.randn(8))])
        engine.end_update()
        assert set(engine.router.workers()) == {s.url for s in servers}  # back after the update
    finally:
        engine.shutdown()


def _fake_request(k: int):
    from mmr1_mega.rollout.protocol import GenerationRequest

    return GenerationRequest(prompt_ids=[5 + k, 9 + k, 20 + k], n=2, max_new_tokens=3)
