"""`mmr1-mega eval --engine vllm`: the benchmark scored through engine servers the command starts and stops
(any model size), against the same command on the local transformers engine."""

from __future__ import annotations

import json

import pytest

from mmr1_mega.eval.main import main as eval_main
from tests.engines.conftest import MAX_PIXELS, MIN_PIXELS, engine_python

pytestmark = [pytest.mark.engine]


def test_eval_through_a_vllm_server_gives_the_local_engines_answers(engine_model, tmp_path, capsys):
    from mmr1_mega.data.synthetic import main as synth

    python = engine_python("vllm")
    assert (
        synth(["--out", str(tmp_path / "data"), "--num-train", "2", "--num-val", "8", "--num-sft", "2"]) == 0
    )
    args = [
        "--model",
        str(engine_model),
        "--data",
        str(tmp_path / "data" / "val.jsonl"),
        "--max-new-tokens",
        "12",
    ]
    capsys.readouterr()
    # the local engine resizes images by the bounds it is given: the model folder's, which the server uses
    bounds = ["--min-pixels", str(MIN_PIXELS), "--max-pixels", str(MAX_PIXELS)]
    assert eval_main([*args, *bounds, "--out", str(tmp_path / "local.jsonl")]) == 0
    local = json.loads((printed := capsys.readouterr().out)[printed.rfind("{\n") :])
    vllm_args = [
        "--engine",
        "vllm",
        "--server-launcher",
        f"{python} -m vllm.entrypoints.openai.api_server",
        "--server-args",
        "--max-model-len 1024",
    ]
    assert eval_main([*args, *vllm_args, "--out", str(tmp_path / "vllm.jsonl")]) == 0
    engine = json.loads((printed := capsys.readouterr().out)[printed.rfind("{\n") :])
    assert engine["engine"] == "vllm" and engine["samples"] == local["samples"] == 8
    rows = [
        [json.loads(line) for line in (tmp_path / f"{k}.jsonl").read_text().splitlines()]
        for k in ("local", "vllm")
    ]
    assert [r["id"] for r in rows[0]] == [r["id"] for r in rows[1]]
    # greedy on the same fp32 weights (tests/engines/test_engines.py holds vLLM to transformers token by token;
    # here a near-tie may flip one answer, not the images or prompts going missing)
    same = sum(a["response"] == b["response"] for a, b in zip(*rows))
    assert same >= 6, [(a["response"], b["response"]) for a, b in zip(*rows)]
