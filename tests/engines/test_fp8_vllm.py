"""FP8 rollout on a real vLLM 0.32 CPU server, in modelopt's FP8 format (the one FP8 format vLLM's CPU build
serves; block FP8 needs kernels this CPU lacks: docs/design/fp8_rollout.md).

- `mmr1-mega convert mcore-to-hf --quantize fp8 --calib-data ...` writes a checkpoint vLLM loads as
  `quantization=modelopt` and generates from.
- FP8 weight syncs from megatron actors (TP2, then PP2) go through vLLM's own reload: after syncing other
  weights the answers change, and after syncing the checkpoint's own weights back (from an actor loaded from
  the bf16 model the checkpoint was made from) every token and log-prob equals what the freshly started server
  gave. So each sync's payload (names, e4m3 weights, scales) is exactly what vLLM's loader takes at start-up.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmr1_mega.distributed.launch import run_on_ranks
from tests.engines import engine_workers
from tests.engines.conftest import ROOT, make_engine, make_server, save_engine_model
from tests.engines.test_engines import _processor, _prompts, _request

pytestmark = [pytest.mark.engine, pytest.mark.distributed]
NEW_TOKENS = 8


def _convert(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mmr1_mega.cli", "convert", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def fp8_served(tmp_path_factory):
    from mmr1_mega.data.synthetic import SyntheticConfig, generate
    from mmr1_mega.quant import fp8

    root = tmp_path_factory.mktemp("fp8-vllm")
    model = root / "bf16"
    save_engine_model(model, seed=0)
    data = generate(str(root / "data"), SyntheticConfig(num_train=16, num_val=4, num_sft=4))
    _convert("hf-to-mcore", "--hf-dir", str(model), "--out", str(root / "mcore"))
    served = root / "fp8"
    _convert(
        "mcore-to-hf",
        "--ckpt",
        str(root / "mcore"),
        "--out",
        str(served),
        "--quantize",
        "fp8",
        "--calib-data",
        data["train"],
        "--calib-prompts",
        "8",
    )  # fmt: skip  (fp32 like the actors below: the same values are quantized)
    server = make_server("vllm", served, root)
    server.dtype = "bfloat16"  # vLLM's FP8 methods take bf16 / fp16 activations
    engine = make_engine("vllm", [server]).launch()
    yield {
        "root": root,
        "model": model,
        "served": served,
        "engine": engine,
        "scales": fp8.read_input_scales(served),
    }
    engine.shutdown()


def test_the_fp8_export_is_modelopt_fp8_and_vllm_serves_it_quantized(fp8_served):
    served, engine = fp8_served["served"], fp8_served["engine"]
    config = json.loads((served / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "modelopt"
    assert config["quantization_config"]["quant_algo"] == "FP8"
    log = open(engine.servers[0].log_path).read()
    assert "quantization=modelopt" in log
    outs = engine.generate(
        [_request(p, temperature=0.0, max_new_tokens=NEW_TOKENS) for p in _prompts(_processor(served))]
    )
    for o in outs:
        assert len(o[0].token_ids) >= 1 and all(lp <= 0 for lp in o[0].logprobs)


def test_fp8_syncs_reach_vllm_and_syncing_the_checkpoints_weights_back_restores_it_exactly(fp8_served):
    root, engine = fp8_served["root"], fp8_served["engine"]
    other = root / "other"
    save_engine_model(other, seed=1)  # same shapes and tokenizer, other weights
    requests = [_request(p, temperature=0.0, max_new_tokens=NEW_TOKENS) for p in _prompts(_processor(other))]
    start = [(o[0].token_ids, o[0].logprobs) for o in engine.generate(requests)]
    (rank0, *_) = run_on_ranks(
        engine_workers.fp8_syncs_into_vllm,
        2,
        str(fp8_served["served"]),
        engine.servers[0].port,
        [str(other), str(fp8_served["model"])],
        ["tp2", "pp2"],
        requests,
        fp8_served["scales"],
    )
    (after_other, m_other), (after_back, m_back) = rank0
    assert [lp for _, lp in after_other] != [lp for _, lp in start]
    assert after_back == start  # tokens and log-probs, bit for bit
    # the FP8 payload: e4m3 decoder linears + 2 scalar scales each, instead of fp32 weights
    assert 0 < m_back["bytes"] == m_other["bytes"]
