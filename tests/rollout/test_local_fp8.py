"""The local engine's FP8 stand-in (LocalEngine(fp8=...)): it takes exactly what an FP8 engine loads (e4m3
decoder linears with their scales, checked as the real loaders check them), computes with their dequantized
values, and reports the FP8 tensors' checksums, so that a sync's verify compares what was sent."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.quant import fp8
from mmr1_mega.rollout.local import LocalEngine
from mmr1_mega.rollout.protocol import EngineError
from mmr1_mega.sync.checksum import tensor_checksum


def _payload(engine: LocalEngine, fmt: str, seed: int = 0):
    """New random weights for every parameter, as the FP8 stream of format fmt."""
    g = torch.Generator().manual_seed(seed)
    state = {n: torch.randn(p.shape, generator=g) * 0.05 for n, p in engine.state_dict_hf().items()}
    modules = {n[: -len(".weight")] for n in state if fp8.quantized_weight(n)}
    weights = fp8.FP8Weights(fmt, dict.fromkeys(modules, 0.03) if fmt == "modelopt" else {})
    return state, list(weights.quantize(state.items()))


@pytest.mark.parametrize("fmt", fp8.FORMATS)
def test_fp8_updates_load_the_dequantized_weights_and_report_the_fp8_checksums(tiny_dir, fmt):
    engine = LocalEngine(tiny_dir, fp8=fmt)
    state, payload = _payload(engine, fmt)
    engine.begin_update()
    for i in range(0, len(payload), 3):  # buckets that split weights from their scales
        engine.update_weights(payload[i : i + 3])
    engine.end_update()
    sent = dict(payload)
    held = engine.state_dict_hf()
    for name, value in held.items():
        if fp8.quantized_weight(name):
            scale = sent[fp8.scale_names(fmt, name)[0]]
            assert torch.equal(value, fp8.dequantize(sent[name], scale))
            assert not torch.equal(value, state[name])  # rounded to FP8
        else:
            assert torch.equal(value, state[name])
    assert engine.weight_checksums() == {n: tensor_checksum(t) for n, t in payload}


def test_a_bf16_weight_sent_to_an_fp8_engine_is_refused_and_changes_nothing(tiny_dir):
    """vLLM only warns and casts bf16 into its FP8 parameters without scaling; the stand-in refuses."""
    engine = LocalEngine(tiny_dir, fp8="block")
    before = engine.weight_checksums()
    state, payload = _payload(engine, "block")
    bad = [(n, t.to(torch.bfloat16) if t.dtype == torch.float8_e4m3fn else t) for n, t in payload]
    first = next(i for i, (n, _) in enumerate(payload) if fp8.quantized_weight(n))
    engine.begin_update()
    with pytest.raises(EngineError, match="loads torch.float8_e4m3fn"):
        engine.update_weights(bad[first - 2 : first + 2])  # high-precision tensors, then a bf16 'FP8' one
    assert engine.weight_checksums() == before
    with pytest.raises(EngineError, match="no parameter or FP8 scale"):
        engine.update_weights([("model.layers.0.mlp.up_proj.weight_scale", torch.ones(()))])


def test_an_update_that_ends_with_a_weight_missing_its_scale_fails(tiny_dir):
    engine = LocalEngine(tiny_dir, fp8="block")
    _, payload = _payload(engine, "block")
    engine.begin_update()
    engine.update_weights([p for p in payload if not p[0].endswith("weight_scale_inv")])
    with pytest.raises(EngineError, match="missing their weight or scales"):
        engine.end_update()


def test_fp8_formats_the_cpu_engines_cannot_run_are_refused_before_launch():
    from mmr1_mega.rollout.factory import check_fp8_servable, cpu_has_amx

    check_fp8_servable(
        "vllm", "modelopt", "cpu"
    )  # vLLM's CPU build serves it (tests/engines/test_fp8_vllm.py)
    check_fp8_servable("sglang", "block", "cuda")
    check_fp8_servable("vllm", None, "cpu")
    if cpu_has_amx():  # the engines' CPU FP8 kernels exist there: nothing to refuse
        return
    with pytest.raises(EngineError, match="no block FP8 kernels"):
        check_fp8_servable("vllm", "block", "cpu")
    with pytest.raises(EngineError, match="no FP8 layer"):
        check_fp8_servable("sglang", "block", "cpu")
