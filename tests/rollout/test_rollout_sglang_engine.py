"""The SGLang engine's process handling against real local server processes (fake_sglang_server.py,
a stand-in speaking SGLang's endpoints: SGLang itself needs a GPU). The adapter code is the real one."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from mmr1_mega.distributed.init import free_port
from mmr1_mega.rollout.protocol import EngineError, GenerationRequest
from mmr1_mega.rollout.sglang import SGLangEngine
from mmr1_mega.rollout.sglang_server import SGLangServer
from tests.rollout import sglang_source as S

FAKE = str(Path(__file__).with_name("fake_sglang_server.py"))
CLASSES = {
    "/generate": "GenerateReqInput",
    "/update_weights_from_tensor": "UpdateWeightsFromTensorReqInput",
    "/pause_generation": "PauseGenerationReqInput",
    "/begin_weight_update": "BeginWeightUpdateReqInput",
    "/end_weight_update": "EndWeightUpdateReqInput",
    "/continue_generation": "ContinueGenerationReqInput",
    "/flush_cache": "FlushCacheReqInput",
    "/release_memory_occupation": "ReleaseMemoryOccupationReqInput",
    "/resume_memory_occupation": "ResumeMemoryOccupationReqInput",
}


def _server(tmp_path, *flags) -> SGLangServer:
    return SGLangServer(
        str(tmp_path / "model"),
        port=free_port(),
        launcher=[sys.executable, FAKE],
        extra_args=["--record-dir", str(tmp_path), *flags],
        log_path=str(tmp_path / "server.log"),
    )


def _calls(tmp_path, server) -> list[dict]:
    f = tmp_path / f"{server.port}.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


@pytest.fixture
def engine(tmp_path):
    eng = SGLangEngine([_server(tmp_path), _server(tmp_path)], timeout_s=30, request_timeout_s=30).launch()
    yield eng
    eng.shutdown()


def _prompts(n_requests: int) -> list[GenerationRequest]:
    g = torch.Generator().manual_seed(int(torch.randint(0, 1000, ()).item()))
    return [
        GenerationRequest(prompt_ids=torch.randint(8, 500, (4,), generator=g).tolist(), n=2, max_new_tokens=3)
        for _ in range(n_requests)
    ]


def test_generation_is_spread_over_the_servers_one_request_per_group_and_returned_in_order(engine, tmp_path):
    reqs = _prompts(4)
    out = engine.generate(reqs)
    for r, samples in zip(reqs, out):
        assert len(samples) == 2 and samples[0].token_ids[0] in range(
            r.prompt_ids[-1] + 1, r.prompt_ids[-1] + 5
        )
        assert samples[0].logprobs == [-0.5] * 3 and samples[0].finish_reason == "length"
    sent = [[c["body"] for c in _calls(tmp_path, s) if c["path"] == "/generate"] for s in engine.servers]
    assert [len(x) for x in sent] == [2, 2]  # one HTTP request per prompt group, spread evenly
    assert all(len(body["input_ids"]) == 2 for x in sent for body in x)  # the group's n samples


def test_results_stream_in_as_they_finish_and_a_slow_servers_timed_out_requests_go_elsewhere(tmp_path):
    slow, fast = _server(tmp_path, "--generate-delay-s", "3"), _server(tmp_path)
    eng = SGLangEngine([slow, fast], timeout_s=30, request_timeout_s=30).launch()
    try:
        reqs = _prompts(4)
        order = [i for i, _ in eng.generate_stream(reqs)]
        on_slow = {
            tuple(c["body"]["input_ids"][0]) for c in _calls(tmp_path, slow) if c["path"] == "/generate"
        }
        slow_ids = [i for i, r in enumerate(reqs) if tuple(r.prompt_ids) in on_slow]
        assert sorted(order) == [0, 1, 2, 3] and len(slow_ids) == 2
        assert set(order[:2]) == set(range(4)) - set(slow_ids)  # the fast server's groups came first
        # a request that times out on the slow (live) server is retried on the other; nothing set aside
        eng.request_timeout_s = 1.0
        out = eng.generate(reqs)
        assert [o[0].token_ids[0] for o in out] == [r.prompt_ids[-1] + 1 for r in reqs]
        assert all(len(o) == 2 for o in out) and eng.stale == set()
        fast_bodies = [c["body"] for c in _calls(tmp_path, fast) if c["path"] == "/generate"]
        assert len(fast_bodies) == 2 + 4  # first call's two, then all four of the second call
    finally:
        eng.shutdown()


def test_a_request_a_live_server_refuses_fails_at_once_and_is_not_retried_elsewhere(tmp_path):
    refusing, other = _server(tmp_path, "--refuse-generate"), _server(tmp_path)
    eng = SGLangEngine([refusing, other], timeout_s=30, request_timeout_s=30).launch()
    try:
        with pytest.raises(EngineError, match="answered 400"):
            eng.generate(_prompts(1))  # the first request of a fresh engine goes to server 0
        assert [c for c in _calls(tmp_path, other) if c["path"] == "/generate"] == []
        assert eng.stale == set()
    finally:
        eng.shutdown()


def test_a_weight_update_pauses_sends_every_bucket_to_every_server_then_flushes_and_resumes(engine, tmp_path):
    S.load_tensor_bucket_module()  # the payload references SGLang's bucket metadata class
    buckets = [[("model.norm.weight", torch.randn(8))], [("lm_head.weight", torch.randn(4, 8))]]
    engine.begin_update()
    for b in buckets:
        engine.update_weights(b)
    engine.end_update()
    for s in engine.servers:
        paths = [c["path"] for c in _calls(tmp_path, s) if c["path"] != "/_start"]
        assert paths == [
            "/pause_generation",
            "/begin_weight_update",
            "/update_weights_from_tensor",
            "/update_weights_from_tensor",
            "/end_weight_update",
            "/flush_cache",
            "/continue_generation",
        ]


def test_every_body_sent_to_a_server_fits_sglang_request_types(engine, tmp_path):
    S.load_tensor_bucket_module()
    engine.generate(_prompts(3))
    engine.release_memory()
    engine.resume_memory()
    engine.begin_update()
    engine.update_weights([("model.norm.weight", torch.randn(8))])
    engine.end_update()
    checked = 0
    for s in engine.servers:
        for c in _calls(tmp_path, s):
            if c["path"] in CLASSES:
                assert S.validate(c["body"], CLASSES[c["path"]]) == [], c["path"]
                checked += 1
    assert checked >= 2 * 9


def test_colocated_servers_release_memory_on_gpus_and_are_left_alone_on_cpu(tmp_path):
    gpu = SGLangEngine([_server(tmp_path)], colocated=True, timeout_s=30, request_timeout_s=30).launch()
    cpu_server = _server(tmp_path)
    cpu_server.device = "cpu"
    cpu = SGLangEngine([cpu_server], colocated=True, timeout_s=30, request_timeout_s=30).launch()
    try:
        for e in (gpu, cpu):
            e.release_memory()
            e.resume_memory()
        memory = ("/release_memory_occupation", "/resume_memory_occupation")
        assert [c["path"] for c in _calls(tmp_path, gpu.servers[0]) if c["path"] in memory] == list(memory)
        # SGLang's CPU server dies on /release_memory_occupation (it synchronises CUDA; seen 2026-11-30)
        assert [c["path"] for c in _calls(tmp_path, cpu_server) if c["path"] in memory] == []
        assert "--device" in cpu_server.command() and "--enable-memory-saver" not in cpu_server.command()
    finally:
        gpu.shutdown()
        cpu.shutdown()


def test_the_stand_in_refuses_an_update_outside_a_session_as_sglang_0_5_23_does(engine):
    S.load_tensor_bucket_module()
    with pytest.raises(EngineError, match="must run between begin_weight_update"):
        engine.update_weights([("model.norm.weight", torch.randn(8))])


def test_a_session_a_failed_update_left_open_is_closed_before_the_next_update(engine, tmp_path):
    S.load_tensor_bucket_module()
    engine.begin_update()  # ... and the update dies here: no end_update
    engine.begin_update()  # the next step's update: begin answers "already open", is closed and reopened
    engine.update_weights([("model.norm.weight", torch.randn(8))])
    engine.end_update()
    for s in engine.servers:
        paths = [c["path"] for c in _calls(tmp_path, s) if "weight_update" in c["path"]]
        assert paths == [
            "/begin_weight_update",
            "/begin_weight_update",
            "/end_weight_update",
            "/begin_weight_update",
            "/end_weight_update",
        ]


def test_a_dead_server_is_restarted_marked_stale_and_fresh_again_after_a_full_update(engine, tmp_path):
    S.load_tensor_bucket_module()
    dead = engine.servers[0]
    first_pid = dead.process.pid
    dead.process.kill()
    dead.process.wait()
    out = engine.generate(_prompts(2))  # server 0's chunk fails, it is restarted, server 1 answers
    assert len(out) == 2 and all(len(s) == 2 for s in out)
    assert dead.alive() and dead.process.pid != first_pid and engine.stale == {0}
    engine.generate(_prompts(2))
    gen_calls = [c for c in _calls(tmp_path, dead) if c["path"] == "/generate" and c["pid"] != first_pid]
    assert gen_calls == []  # a stale server gets no generation
    engine.begin_update()
    engine.update_weights([("model.norm.weight", torch.randn(8))])
    engine.end_update()
    assert engine.stale == set()
    restarted = [c["path"] for c in _calls(tmp_path, dead) if c["pid"] != first_pid]
    assert "/update_weights_from_tensor" in restarted and restarted[-1] == "/continue_generation"


def test_a_server_that_never_becomes_healthy_times_out_and_is_stopped(tmp_path):
    server = _server(tmp_path, "--hang-health")
    server.start()
    start = time.monotonic()
    with pytest.raises(EngineError, match="not healthy within 2 s"):
        server.wait_healthy(timeout_s=2)
    assert time.monotonic() - start < 10 and server.process is None


def test_a_server_that_exits_while_starting_is_reported_with_its_exit_code(tmp_path):
    engine = SGLangEngine([_server(tmp_path, "--exit-at-start")], timeout_s=30)
    with pytest.raises(EngineError, match="exited with code 3"):
        engine.launch()
    assert not engine.servers[0].alive()
