"""FP8 rollout weights (mmr1_mega/quant/fp8.py): error within what e4m3 allows, equal to the block recipe the
peers use and to modelopt's own quantizer, the payload an FP8 engine loads, the checkpoint it starts from, and
modelopt's calibration wired to the decoder's linear inputs.

The e4m3 bound (derived, not measured): e4m3 has 3 mantissa bits, so a value v = x / s of magnitude
>= 2^-6 (the smallest normal) rounds to within half an ulp, 2^-4 |v|; below that (subnormals, ulp 2^-9)
within 2^-10. Dequantizing multiplies back by s; the fp32 division and product add 2 x 2^-24 relative.
So |deq(q(x)) - x| <= s max(2^-4 |x/s|, 2^-10) + 2^-22 |x|, with no clipping because s >= amax / 448.
"""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch

from mmr1_mega.models.hf_io import canonical_name
from mmr1_mega.quant import fp8

SEED = int(os.environ.get("MMR1_TEST_SEED", torch.seed() % 2**31))


def e4m3_bound(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The largest |dequantize(quantize(x)) - x| e4m3 allows, per element, for the per-element scale."""
    v = (x.double() / scale.double()).abs()
    return (
        scale.double() * torch.maximum(v * 2.0**-4, torch.full_like(v, 2.0**-10))
        + x.double().abs() * 2.0**-22
    )


def tile_scales(scale: torch.Tensor, shape) -> torch.Tensor:
    """A block scale [ceil(N/128), ceil(K/128)] expanded to each element of a [N, K] weight."""
    return scale.repeat_interleave(fp8.BLOCK, 0).repeat_interleave(fp8.BLOCK, 1)[: shape[0], : shape[1]]


def random_weight(shape, generator) -> torch.Tensor:
    """Gaussian weights with tiles of very different magnitudes (1e-4 .. 10), some tiles all zero, a few
    outliers: every branch of the bound (normals, subnormals, zero tiles, a tile's max at 448)."""
    w = torch.randn(shape, generator=generator)
    rows, cols = math.ceil(shape[0] / 128), math.ceil(shape[1] / 128)
    mags = 10.0 ** torch.empty(rows, cols).uniform_(-4, 1, generator=generator)
    w = w * tile_scales(mags, shape)
    if rows * cols > 1:
        w[:128, :128] = 0.0  # an all-zero tile
    w.view(-1)[torch.randint(0, w.numel(), (5,), generator=generator)] *= 50.0
    return w


@pytest.mark.parametrize("shape", [(256, 384), (200, 300), (128, 1), (1, 640), (11008 // 8, 2048 // 8)])
def test_block_quantization_error_is_within_the_e4m3_bound(shape):
    g = torch.Generator().manual_seed(SEED)
    w = random_weight(shape, g)
    q, scale = fp8.quantize_block(w)
    assert q.dtype == torch.float8_e4m3fn and tuple(q.shape) == shape
    assert scale.dtype == torch.float32
    assert tuple(scale.shape) == (math.ceil(shape[0] / 128), math.ceil(shape[1] / 128))
    deq = fp8.dequantize(q, scale)
    assert torch.isfinite(deq).all()
    err = (deq.double() - w.double()).abs()
    bound = e4m3_bound(w, tile_scales(scale, shape))
    assert (err <= bound).all(), f"seed {SEED}: worst ratio {(err / bound).max():.3f}"
    # the bound is not loose: some element uses more than half of it (rounding does happen)
    assert (err / bound).max() > 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_quantization_equals_the_deepseek_recipe_slime_verl_and_nemo_rl_use(dtype):
    """The peers' hand-written recipe (fp32, scale = max(tile amax, eps) / 448, q = e4m3(clamp(w / scale)))
    written out here independently: same e4m3 bits, same scales."""
    g = torch.Generator().manual_seed(SEED + 1)
    w = random_weight((384, 200), g).to(dtype)
    q, scale = fp8.quantize_block(w)
    x = w.float()
    n, k = x.shape
    ref_q = torch.empty(n, k, dtype=torch.float8_e4m3fn)
    ref_s = torch.empty(math.ceil(n / 128), math.ceil(k / 128))
    for i in range(0, n, 128):
        for j in range(0, k, 128):
            tile = x[i : i + 128, j : j + 128]
            s = tile.abs().amax().clamp(min=fp8.AMAX_FLOOR) / 448.0
            ref_s[i // 128, j // 128] = s
            ref_q[i : i + 128, j : j + 128] = (tile / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    assert torch.equal(scale, ref_s)
    assert torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8))


def test_dequantize_equals_the_fp64_product_of_codes_and_scales():
    g = torch.Generator().manual_seed(SEED + 2)
    q, scale = fp8.quantize_block(random_weight((300, 260), g))
    ref = q.double() * tile_scales(scale.double(), q.shape)
    # an fp32 product of two fp32 numbers: within half an fp32 ulp, 2^-24 relative
    assert ((fp8.dequantize(q, scale).double() - ref).abs() <= ref.abs() * 2.0**-24).all()
    with pytest.raises(fp8.FP8Error, match="block scales"):
        fp8.dequantize(q, scale[:, :1])


def test_an_all_zero_weight_quantizes_to_zeros_not_nan():
    q, scale = fp8.quantize_block(torch.zeros(130, 70))
    assert torch.equal(fp8.dequantize(q, scale), torch.zeros(130, 70))
    q, scale = fp8.quantize_per_tensor(torch.zeros(3, 4), 0.0)
    assert torch.equal(fp8.dequantize(q, scale), torch.zeros(3, 4))


# --- which tensors, named how --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def hf_model(request):
    from mmr1_mega.models.registry import get_family
    from mmr1_mega.models.tiny import tiny_hf_config

    cfg = tiny_hf_config(request.param, num_layers=2)
    torch.manual_seed(0)
    return get_family(cfg.model_type).hf_class()(cfg).eval()


def test_only_the_decoders_linear_weights_are_fp8(hf_model):
    names = list(hf_model.state_dict())
    quantized = {n for n in names if fp8.quantized_weight(n)}
    layers = hf_model.config.text_config.num_hidden_layers
    assert len(quantized) == 7 * layers  # q, k, v, o, gate, up, down per layer
    for n in quantized:
        assert ".layers." in n and n.endswith("_proj.weight") and "visual" not in n
    kept = set(names) - quantized
    # the vision tower (its own q/k/v and gate/up/down on Qwen2.5-VL), embeddings, lm_head, norms, biases
    assert any("visual" in n and n.endswith("proj.weight") for n in kept)
    assert any("embed_tokens" in n for n in kept)
    assert all(
        not fp8.quantized_weight(n) for n in kept if n.endswith(("bias", "norm.weight", "lm_head.weight"))
    )


@pytest.mark.parametrize("fmt", fp8.FORMATS)
def test_the_quantized_stream_is_exactly_what_the_engines_loader_takes(hf_model, fmt):
    state = hf_model.state_dict()
    modules = {n[: -len(".weight")] for n in state if fp8.quantized_weight(n)}
    weights = fp8.FP8Weights(fmt, dict.fromkeys(modules, 0.01) if fmt == "modelopt" else {})
    payload = list(weights.quantize(state.items()))
    shapes = {n: tuple(t.shape) for n, t in state.items()}
    weights.check_payload(((n, t.shape, t.dtype) for n, t in payload), shapes)
    names = [n for n, _ in payload]
    assert len(names) == len(set(names))
    # a missing scale, a bf16 weight where FP8 is loaded, or a stray name is refused
    for broken in (
        [p for p in payload if not p[0].endswith(("_scale_inv", "weight_scale"))],
        [(n, t.to(torch.bfloat16) if t.dtype == torch.float8_e4m3fn else t) for n, t in payload],
        payload + [("model.layers.0.mlp.up_proj.weight_scale_2", torch.ones(()))],
    ):
        with pytest.raises(fp8.FP8Error, match="differs from the engine"):
            weights.check_payload(((n, t.shape, t.dtype) for n, t in broken), shapes)


def test_modelopt_fused_groups_share_one_scale_within_the_bound():
    """q / k / v (and gate / up) of a layer get one weight scale, the group's amax / 448 (vLLM fuses them into
    one layer; its CPU build cannot re-quantize shards to a common scale)."""
    g = torch.Generator().manual_seed(SEED + 3)
    p = "model.layers.3."
    group = {
        p + "self_attn.q_proj.weight": torch.randn(64, 32, generator=g) * 0.02,
        p + "self_attn.k_proj.weight": torch.randn(16, 32, generator=g) * 0.5,
        p + "self_attn.v_proj.weight": torch.randn(16, 32, generator=g) * 0.001,
    }
    scales = {n[: -len(".weight")]: 0.02 for n in group}
    out = dict(fp8.FP8Weights("modelopt", scales).quantize(reversed(list(group.items()))))
    amax = max(float(w.abs().amax()) for w in group.values())
    for name, w in group.items():
        module = name[: -len(".weight")]
        assert out[module + ".weight_scale"].item() == pytest.approx(amax / 448, rel=2**-23)
        assert out[module + ".input_scale"].item() == pytest.approx(0.02)
        err = (fp8.dequantize(out[name], out[module + ".weight_scale"]).double() - w.double()).abs()
        assert (err <= e4m3_bound(w, out[module + ".weight_scale"])).all()
    with pytest.raises(fp8.FP8Error, match="fused groups"):
        list(fp8.FP8Weights("modelopt", scales).quantize(list(group.items())[:2]))
    with pytest.raises(fp8.FP8Error, match="activation scale"):
        list(fp8.FP8Weights("modelopt", {}).quantize(group.items()))


def test_block_shapes_the_engines_cannot_hold_are_refused_before_any_work():
    from mmr1_mega.models.presets import qwen2_5_vl_config

    for size in ("3b", "7b"):
        shapes = fp8.decoder_linear_shapes(qwen2_5_vl_config(size, num_layers=1))
        fp8.check_block_shapes(shapes, engine_tp=1)
        fp8.check_block_shapes(shapes, engine_tp=2)
    from mmr1_mega.models.tiny import tiny_hf_config

    with pytest.raises(fp8.FP8Error, match="multiples of 128.*fp8_format=modelopt"):
        fp8.check_block_shapes(fp8.decoder_linear_shapes(tiny_hf_config(hidden_size=96, num_heads=3)))


# --- the checkpoint engines start from ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", fp8.FORMATS)
def test_the_fp8_checkpoint_holds_the_stream_and_the_formats_quantization_config(tmp_path, fmt):
    from safetensors.torch import load_file

    from mmr1_mega.models.tiny import save_tiny_model

    src = tmp_path / "src"
    hf = save_tiny_model(
        src, hidden_size=128, num_heads=1, num_kv_heads=1, intermediate_size=256, num_layers=2
    )
    state = {k: v for k, v in load_file(src / "model.safetensors").items()}
    modules = {n[: -len(".weight")] for n in state if fp8.quantized_weight(n)}
    weights = fp8.FP8Weights(fmt, {m: 0.5 for m in modules} if fmt == "modelopt" else {})
    out = fp8.write_fp8_checkpoint(src, tmp_path / "fp8", weights)
    written = load_file(out / "model.safetensors")
    expected = dict(weights.quantize(state.items()))
    assert written.keys() == expected.keys()
    for n, t in expected.items():
        assert written[n].dtype == t.dtype and torch.equal(
            written[n].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)
        ), n
    assert fp8.checkpoint_format(out) == fmt
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == hf.config.model_type
    q = config["quantization_config"]
    if fmt == "block":
        assert q["quant_method"] == "fp8" and q["weight_block_size"] == [128, 128]
        assert q["activation_scheme"] == "dynamic"
        # vLLM matches ignored layers by exact name: every kept linear (vision tower, lm_head) is listed
        assert "lm_head" in q["ignored_layers"]
        assert any(x.startswith("visual.blocks.0.") for x in q["ignored_layers"])
        assert not any(fp8.quantized_weight(x + ".weight") for x in q["ignored_layers"])
    else:
        from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format

        hq = json.loads((out / "hf_quant_config.json").read_text())
        assert hq["quantization"]["quant_algo"] == "FP8"
        assert q == {"quant_method": "modelopt", **convert_hf_quant_config_format(hq)}
        scales = fp8.read_input_scales(out)
        assert scales.keys() == modules and all(v.item() == 0.5 for v in scales.values())


def test_modelopt_calibration_gives_each_linear_its_input_amax_over_448():
    """modelopt's max calibration, read back per decoder linear, equals the largest |input| each linear saw
    (recorded here with forward hooks on a copy of the model); fused members share their max."""
    import copy

    from mmr1_mega.models.registry import get_family
    from mmr1_mega.models.tiny import tiny_hf_config, tiny_vl_batch

    cfg = tiny_hf_config("qwen2_5_vl", num_layers=2)
    torch.manual_seed(SEED % 1000)
    model = get_family(cfg.model_type).hf_class()(cfg).eval()
    batch = tiny_vl_batch(cfg, seed=SEED % 1000)
    seen: dict[str, float] = {}
    reference = copy.deepcopy(model)

    def record(name):
        return lambda mod, args, out: seen.__setitem__(name, float(args[0].abs().amax()))

    hooks = [
        m.register_forward_hook(record(canonical_name(name)))
        for name, m in reference.named_modules()
        if fp8.quantized_weight(f"{name}.weight")
    ]
    with torch.no_grad():
        reference(**batch)
    for h in hooks:
        h.remove()
    scales = fp8.calibrate_input_scales(model, lambda m: m(**batch))
    assert scales.keys() == seen.keys() and len(seen) == 7 * cfg.text_config.num_hidden_layers
    for name, scale in scales.items():
        layer, linear = re.match(r"(model\.layers\.\d+)\.(.*)$", name).groups()
        members = fp8._FUSED.get(linear, (linear,))
        amax = max(seen[f"{layer}.{m}"] for m in members)
        assert scale.item() == pytest.approx(amax / 448, rel=1e-6), name


def test_without_zero_tiles_the_block_quantizer_is_modelopts_own_default_path():
    """quantize_block only floors the amax (for all-zero tiles) before handing modelopt the scales; on a
    weight without zero tiles it equals modelopt's FP8QTensor.quantize computing its own scales."""
    from modelopt.torch.quantization.qtensor import FP8QTensor

    g = torch.Generator().manual_seed(SEED + 4)
    w = torch.randn(300, 200, generator=g) * 0.02
    q, scale = fp8.quantize_block(w)
    ref, ref_scale = FP8QTensor.quantize(w, block_sizes={-1: 128, -2: 128})
    assert torch.equal(scale, ref_scale.float())
    assert torch.equal(q.view(torch.uint8), ref._quantized_data.view(torch.uint8))
    per_tensor, s = fp8.quantize_per_tensor(w, w.abs().amax())
    ref, ref_s = FP8QTensor.quantize(w)
    assert torch.equal(s, ref_s.float().reshape(())) and torch.equal(
        per_tensor.view(torch.uint8), ref._quantized_data.view(torch.uint8)
    )
