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


def _decoder_groups(hf_config) -> dict:
    """Layer 0's linears as vLLM fuses them: group -> ([each member's rows], columns), and the members' names."""
    from mmr1_mega.quant import fp8

    shapes = dict(fp8.decoder_linear_shapes(hf_config)[:7])
    p = "model.layers.0."
    members = {
        "qkv_proj": [p + f"self_attn.{x}_proj.weight" for x in "qkv"],
        "o_proj": [p + "self_attn.o_proj.weight"],
        "gate_up_proj": [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
        "down_proj": [p + "mlp.down_proj.weight"],
    }
    return {g: ([shapes[n][0] for n in ns], shapes[ns[0]][1], ns) for g, ns in members.items()}


def test_the_block_fp8_payload_fills_exactly_the_parameters_vllms_fp8_method_creates(engine_model):
    """Block FP8 cannot run on this CPU; its payload is checked against the parameters vLLM's `fp8` method
    creates (its own functions, run in its environment) for real Qwen2.5-VL widths and the demo's: per fused
    layer, the members' e4m3 weights stack into vLLM's weight and their weight_scale_inv blocks into its
    scale, and vLLM refuses exactly the shapes our config check refuses."""
    import torch

    from mmr1_mega.distributed.init import free_port
    from mmr1_mega.models.presets import qwen2_5_vl_config
    from mmr1_mega.models.tiny import tiny_hf_config
    from mmr1_mega.quant import fp8
    from tests.engines.conftest import engine_python

    configs = {
        "3b": qwen2_5_vl_config("3b", num_layers=1),
        "7b": qwen2_5_vl_config("7b", num_layers=1),
        "demo": tiny_hf_config(hidden_size=96, num_heads=3, num_kv_heads=1, intermediate_size=256),
    }
    groups = {f"{c}/{g}": v for c, cfg in configs.items() for g, v in _decoder_groups(cfg).items()}
    proc = subprocess.run(
        [
            engine_python("vllm"),
            str(ROOT / "tests" / "engines" / "vllm_fp8_params.py"),
            str(engine_model),
            json.dumps({k: [rows, cols] for k, (rows, cols, _) in groups.items()}),
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    vllm = json.loads(line.removeprefix("RESULT "))
    for key, (rows, cols, names) in groups.items():
        got = vllm[key]
        ours = [fp8.expected_tensors("block", n, (r, cols)) for n, r in zip(names, rows)]
        weights = [o[n] for o, n in zip(ours, names)]
        scales = [o[fp8.scale_names("block", n)[0]] for o, n in zip(ours, names)]
        assert got["weight"] == ["float8_e4m3fn", [sum(r for _, (r, _) in weights), cols]], key
        assert all(dtype == torch.float8_e4m3fn for dtype, _ in weights)
        assert all(dtype == torch.float32 for dtype, _ in scales) and got["weight_scale_inv"][0] == "float32"
        vllm_ok = got["block_shape_error"] is None
        try:
            fp8.check_block_shapes([(n, (r, cols)) for n, r in zip(names, rows)])
            ours_ok = True
        except fp8.FP8Error:
            ours_ok = False
        assert ours_ok == vllm_ok, (key, got["block_shape_error"])
        if vllm_ok:  # each member's scale blocks land at its row offset / 128 in vLLM's scale
            assert got["weight_scale_inv"][1] == [sum(s[0] for _, s in scales), scales[0][1][1]], key
    assert all(
        vllm[f"{c}/{g}"]["block_shape_error"] is None
        for c in ("3b", "7b")
        for g in _decoder_groups(configs[c])
    )
