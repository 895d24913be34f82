"""FP8 (e4m3) weights for the rollout engines: which weights, how they are quantized, in which format.

The actor trains in bf16 / fp32; with rollout.weight_dtype=fp8 the engines serve FP8 weights and every
weight sync quantizes the actor's HF-named tensor stream on the fly (`FP8Weights.quantize`, applied by the
sync leader before bucketing). Quantization is nvidia-modelopt's own (`FP8QTensor.quantize`, its block
amax / padding helpers, its calibration for activation scales, its HF quantization-config converter); this
module only chooses the tensors, the scales' grouping and the names the engines load.

Two formats (docs/design/fp8_rollout.md has the engines' loading code this follows):
- "block" (DeepSeek-style `quant_method: fp8`, what slime, verl and NeMo-RL serve): per 128 x 128 tile of a
  weight, scale = max(tile amax, tiny) / 448 in fp32, sent as `<module>.weight_scale_inv` [ceil(N/128),
  ceil(K/128)] beside the e4m3 `<module>.weight`; activations are quantized dynamically by the engine (per
  token and 128 channels). vLLM and SGLang on GPUs; neither runs it on a CPU without AMX.
- "modelopt" (`quant_method: modelopt`, `quant_algo: FP8`, modelopt's HF export format): one fp32 scale per
  weight (`<module>.weight_scale`, 0-d) and a static activation scale (`<module>.input_scale`, 0-d) from
  calibration. The weight scale is shared by the shards an engine fuses (q / k / v, gate / up), so that no
  engine has to re-quantize at load (vLLM's CPU build cannot). vLLM (GPU and CPU); SGLang loads it once but
  its layers do not survive weight updates (so its weight syncs need "block").

Which weights are FP8: the linear layers of the language model's decoder (`quantized_weight`), nothing
else: the vision tower and its merger, the embeddings, lm_head, the norms and the biases stay in the
model's dtype (every engine and modelopt's default FP8 config leave them unquantized too).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmr1_mega.models.hf_io import canonical_name

FORMATS = ("block", "modelopt")
E4M3_MAX = 448.0  # largest finite float8_e4m3fn
BLOCK = 128  # the block format's tile: 128 output x 128 input channels
# the smallest amax a scale is made from: an all-zero tile would give scale 0 and 0 / 0 = NaN weights
AMAX_FLOOR = 1e-12

# the decoder's linear layers (HF module names after "model.layers.<i>."): the only FP8 weights
_DECODER_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
_DECODER_LINEAR = re.compile(
    r"^model\.layers\.(\d+)\.(" + "|".join(map(re.escape, _DECODER_LINEARS)) + r")\.weight$"
)
# the shards an engine fuses into one layer (vLLM's / SGLang's qkv_proj and gate_up_proj), in its order
_FUSED_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("mlp.gate_proj", "mlp.up_proj"),
)
_FUSED = {linear: group for group in _FUSED_GROUPS for linear in group}  # linear -> its group


def _fused_members(name: str) -> list[str]:
    """The weights an engine fuses with the decoder linear weight `name` (on-disk names, `name`'s own among
    them; just it when the engine does not fuse it)."""
    layer, linear = _DECODER_LINEAR.match(canonical_name(name)).groups()
    return [f"model.layers.{layer}.{m}.weight" for m in _FUSED.get(linear, (linear,))]


class FP8Error(ValueError):
    """FP8 weights cannot be made or do not match what the engine loaded."""


def modelopt_fp8():
    """modelopt's FP8 tensor class and block helpers; an FP8Error naming the install when it is missing."""
    try:
        import warnings

        with warnings.catch_warnings():  # "transformers 5.x is not tested with modelopt": we use no HF plugin
            warnings.simplefilter("ignore", UserWarning)
            from modelopt.torch.quantization.qtensor import FP8QTensor
            from modelopt.torch.quantization.utils import reduce_block_amax, reduce_block_padding
    except ImportError as e:
        raise FP8Error(
            "FP8 rollout weights need nvidia-modelopt (pip install 'mmr1-mega[fp8]', i.e. nvidia-modelopt>=0.47): "
            f"{e}"
        ) from e
    return FP8QTensor, reduce_block_amax, reduce_block_padding


def quantized_weight(name: str) -> bool:
    """Whether the HF weight `name` (on-disk or released form) is served in FP8: a linear weight of the
    language model's decoder. Every other tensor keeps the model's dtype."""
    return _DECODER_LINEAR.match(canonical_name(name)) is not None


def module_of(name: str) -> str:
    """`<module>.weight` -> `<module>`."""
    if not name.endswith(".weight"):
        raise FP8Error(f"{name} is not a weight")
    return name[: -len(".weight")]


def quantize_block(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D weight [N, K] -> (e4m3 [N, K], fp32 scale_inv [ceil(N/128), ceil(K/128)]), per 128 x 128 tile:
    scale = max(tile amax, AMAX_FLOOR) / 448, q = e4m3(w / scale) (modelopt's FP8QTensor, in fp32; a
    partial edge tile is zero-padded, which does not change its amax)."""
    if weight.dim() != 2:
        raise FP8Error(f"block FP8 quantizes 2-D weights, got shape {tuple(weight.shape)}")
    FP8QTensor, reduce_block_amax, reduce_block_padding = modelopt_fp8()
    blocks = {-1: BLOCK, -2: BLOCK}
    w = weight.detach().float()
    amax = reduce_block_amax(reduce_block_padding(w, blocks), blocks).clamp(min=AMAX_FLOOR)
    qt, scale = FP8QTensor.quantize(w, scales=amax / E4M3_MAX, block_sizes=blocks)
    return qt._quantized_data, scale.float()


def quantize_per_tensor(
    weight: torch.Tensor, amax: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """weight -> (e4m3 weight, 0-d fp32 scale = max(amax, AMAX_FLOOR) / 448), with the given amax (the
    weight's own, or a fused group's: at least the weight's)."""
    FP8QTensor, _, _ = modelopt_fp8()
    w = weight.detach().float()
    scale = torch.as_tensor(amax, dtype=torch.float32, device=w.device).clamp(min=AMAX_FLOOR) / E4M3_MAX
    qt, scale = FP8QTensor.quantize(w, scales=scale.reshape(()))
    return qt._quantized_data, scale.float().reshape(())


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An e4m3 weight back to `dtype` with its scale: 0-d (per tensor) or [ceil(N/128), ceil(K/128)] (block),
    by modelopt's FP8QTensor.dequantize."""
    FP8QTensor, _, _ = modelopt_fp8()
    if q.dtype != torch.float8_e4m3fn:
        raise FP8Error(f"dequantize takes float8_e4m3fn data, got {q.dtype}")
    qt = FP8QTensor(q.shape, torch.float32, q)
    if scale.dim() == 0:
        return qt.dequantize(torch.float32, scale=scale.float()).to(dtype)
    want = (math.ceil(q.shape[0] / BLOCK), math.ceil(q.shape[1] / BLOCK))
    if tuple(scale.shape) != want:
        raise FP8Error(f"a {tuple(q.shape)} weight's block scales are {want}, got {tuple(scale.shape)}")
    out = qt.dequantize(torch.float32, scale=scale.float(), block_sizes={-1: BLOCK, -2: BLOCK})
    return out[: q.shape[0], : q.shape[1]].to(dtype)


def scale_names(fmt: str, name: str) -> tuple[str, ...]:
    """The names the engine loads beside an FP8 weight `<module>.weight`, by format."""
    module = module_of(name)
    if fmt == "block":
        return (f"{module}.weight_scale_inv",)
    if fmt == "modelopt":
        return (f"{module}.weight_scale", f"{module}.input_scale")
    raise FP8Error(f"FP8 format must be one of {FORMATS}, got {fmt!r}")


def expected_tensors(fmt: str, name: str, shape: tuple[int, ...]) -> dict[str, tuple[torch.dtype, tuple]]:
    """What an FP8 engine loads for the HF weight `name` of `shape`: name -> (dtype, shape); for weights
    kept in high precision, the weight itself with dtype None (the model's)."""
    if not quantized_weight(name):
        return {name: (None, tuple(shape))}
    n, k = shape
    if fmt == "block":
        return {
            name: (torch.float8_e4m3fn, (n, k)),
            scale_names(fmt, name)[0]: (torch.float32, (math.ceil(n / BLOCK), math.ceil(k / BLOCK))),
        }
    weight_scale, input_scale = scale_names(fmt, name)
    return {
        name: (torch.float8_e4m3fn, (n, k)),
        weight_scale: (torch.float32, ()),
        input_scale: (torch.float32, ()),
    }


def check_block_shapes(names_shapes: Iterable[tuple[str, tuple[int, ...]]], engine_tp: int = 1) -> None:
    """Raise FP8Error when the engines' block FP8 layers cannot hold these weights: each fused shard's rows
    (q, k, gate; v and up too at engine TP > 1) and every split dimension at engine TP > 1 must be multiples
    of 128 (vLLM's validate_fp8_block_shape, checked against it in tests/engines/test_fp8_vllm.py)."""
    bad = []
    for name, shape in names_shapes:
        m = _DECODER_LINEAR.match(canonical_name(name))
        if m is None:
            continue
        n, k = shape
        linear = m.group(2)
        row_split = linear not in ("self_attn.o_proj", "mlp.down_proj")  # column parallel: rows split
        # unsplit, a fused layer's last shard (v, up) may end in a partial block (vLLM's rule)
        last_shard = linear in _FUSED and _FUSED[linear][-1] == linear
        checked = (linear in _FUSED and not (last_shard and engine_tp == 1)) or engine_tp > 1
        if checked and row_split and (n // engine_tp) % BLOCK:
            bad.append(f"{name} rows {n} / engine TP {engine_tp}")
        if engine_tp > 1 and not row_split and (k // engine_tp) % BLOCK:
            bad.append(f"{name} columns {k} / engine TP {engine_tp}")
    if bad:
        raise FP8Error(
            f"block FP8 needs multiples of {BLOCK} there: {bad[:4]}{' ...' if len(bad) > 4 else ''}; "
            "use rollout.fp8_format=modelopt (per-tensor scales) for this model"
        )


@dataclass
class FP8Weights:
    """How the engines' FP8 weights are made from the actor's HF-named tensors.

    fmt: "block" or "modelopt". input_scales (modelopt only): the static activation scale of every FP8
    module (its name without ".weight", released or on-disk form), calibrated once (`calibrate_input_scales`)
    and sent again with every sync (vLLM's reload rebuilds a layer from all of its checkpoint tensors).
    """

    fmt: str
    input_scales: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise FP8Error(f"FP8 format must be one of {FORMATS}, got {self.fmt!r}")
        self.input_scales = {
            canonical_name(k): torch.as_tensor(v, dtype=torch.float32).reshape(())
            for k, v in self.input_scales.items()
        }

    def _input_scale(self, module: str) -> torch.Tensor:
        scale = self.input_scales.get(canonical_name(module))
        if scale is None:
            raise FP8Error(
                f"no calibrated activation scale for {module}: modelopt FP8 weights need input scales from "
                "calibration (calibrate_input_scales, or an FP8 checkpoint written by `mmr1-mega convert "
                "mcore-to-hf --quantize fp8`)"
            )
        return scale

    def quantize(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The stream the engine loads: each decoder linear weight replaced by its e4m3 weight and scales
        (`expected_tensors`), every other tensor unchanged, in stream order. modelopt: a fused group's
        members (q / k / v, gate / up of one layer) are held until the whole group has arrived (they share
        one scale); raises FP8Error when the stream ends with a group incomplete."""
        pending: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in named_tensors:
            if not quantized_weight(name):
                yield name, tensor
                continue
            if tensor.dim() != 2:
                raise FP8Error(f"{name}: a decoder linear weight must be 2-D, got {tuple(tensor.shape)}")
            if self.fmt == "block":
                q, scale_inv = quantize_block(tensor)
                yield name, q
                yield scale_names("block", name)[0], scale_inv
                continue
            members = _fused_members(name)
            key = members[0]  # the group's first shard names it
            pending.setdefault(key, {})[name] = tensor
            if len(pending[key]) == len(members):
                yield from self._per_tensor(pending.pop(key))
        if pending:
            raise FP8Error(f"the weight stream ended inside fused groups {sorted(pending)} (missing shards)")

    def _per_tensor(self, group: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        amax = max(t.detach().abs().amax().float() for t in group.values())
        for name, tensor in group.items():
            q, scale = quantize_per_tensor(tensor, amax)
            weight_scale, input_scale = scale_names("modelopt", name)
            yield name, q
            yield weight_scale, scale
            yield input_scale, self._input_scale(module_of(name)).to(q.device, copy=True)

    def quantization_config(self, weight_names: Iterable[str]) -> dict:
        """config.json's `quantization_config` for a checkpoint with these weights (HF names)."""
        kept_linears = sorted(
            {module_of(n) for n in weight_names if n.endswith(".weight") and not quantized_weight(n)}
        )
        if self.fmt == "block":
            # vLLM matches ignored_layers by exact module name (after its name mapping), SGLang by prefix
            return {
                "quant_method": "fp8",
                "fmt": "e4m3",
                "activation_scheme": "dynamic",
                "weight_block_size": [BLOCK, BLOCK],
                "ignored_layers": kept_linears,
            }
        from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format

        converted = convert_hf_quant_config_format(self.hf_quant_config())
        return {"quant_method": "modelopt", **converted}

    def hf_quant_config(self) -> dict:
        """modelopt's hf_quant_config.json for the modelopt format (vLLM reads either file)."""
        import modelopt

        return {
            "producer": {"name": "modelopt", "version": modelopt.__version__},
            "quantization": {
                "quant_algo": "FP8",
                "kv_cache_quant_algo": None,
                # wildcards (vLLM ModelOptQuantConfigBase.is_layer_excluded); embeddings are no Linear
                "exclude_modules": ["lm_head", "*visual*", "*vision*", "*merger*"],
            },
        }

    def check_payload(
        self, named: Iterable[tuple[str, torch.Size | tuple, torch.dtype]], source_shapes: dict
    ) -> None:
        """Raise FP8Error unless (name, shape, dtype) of a payload are exactly what the engine's FP8 loader
        takes for the source weights `source_shapes` (HF name -> shape)."""
        want: dict[str, tuple] = {}
        for name, shape in source_shapes.items():
            want.update(expected_tensors(self.fmt, name, tuple(shape)))
        got = {n: (d, tuple(s)) for n, s, d in named}
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        wrong = [
            f"{n}: {got[n][0]} {got[n][1]} (want {want[n][0] or 'model dtype'} {want[n][1]})"
            for n in sorted(want.keys() & got.keys())
            if got[n][1] != want[n][1]
            or (want[n][0] is not None and got[n][0] != want[n][0])
            or (want[n][0] is None and got[n][0] in (torch.float8_e4m3fn,))
        ]
        if missing or extra or wrong:
            raise FP8Error(
                f"FP8 payload differs from the engine's {self.fmt} loader: missing {missing[:4]}, "
                f"unexpected {extra[:4]}, wrong {wrong[:4]}"
            )


def write_fp8_checkpoint(
    src: str | Path, out: str | Path, weights: FP8Weights, max_shard_mb: float = 4096
) -> Path:
    """An FP8 copy of the HF checkpoint `src` in `out`: the decoder's linear weights quantized by
    `weights`, everything else copied as it is, config.json with the format's quantization_config (and
    modelopt's hf_quant_config.json for the modelopt format), tokenizer / processor files copied.
    Returns out."""
    from mmr1_mega.models.hf_io import HFCheckpoint, ShardedWriter, copy_assets, finalize_index

    src, out = Path(src), Path(out)
    ckpt = HFCheckpoint(src)
    names = ckpt.names()
    if weights.fmt == "block":
        check_block_shapes((n, ckpt.shape(n)) for n in names)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardedWriter(out, ".tmp-fp8", max_shard_mb)
    for name, tensor in weights.quantize((n, ckpt.read(n)) for n in _grouped(names)):
        writer.add(name, tensor)
    writer.flush()
    finalize_index(out, writer.written)
    copy_assets(src, out)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = weights.quantization_config(names)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if weights.fmt == "modelopt":
        (out / "hf_quant_config.json").write_text(json.dumps(weights.hf_quant_config(), indent=2) + "\n")
    return out


def _grouped(names: Iterable[str]) -> list[str]:
    """Names in checkpoint order with each layer's tensors together (a fused group's shards close by)."""

    def key(n: str):
        m = re.match(r"^(.*\.layers\.)(\d+)\.(.*)$", canonical_name(n))
        return (m.group(1), int(m.group(2)), m.group(3)) if m else (canonical_name(n), -1, "")

    return sorted(names, key=key)


def read_input_scales(fp8_dir: str | Path) -> dict[str, torch.Tensor]:
    """The static activation scales (`<module>.input_scale`) of a modelopt-format FP8 checkpoint."""
    from mmr1_mega.models.hf_io import HFCheckpoint

    ckpt = HFCheckpoint(fp8_dir)
    return {n[: -len(".input_scale")]: ckpt.read(n) for n in ckpt.names() if n.endswith(".input_scale")}


def calibrate_input_scales(model, forward_loop) -> dict[str, torch.Tensor]:
    """Static FP8 activation scales of a transformers Qwen-VL model's decoder linears by modelopt's own
    calibration (mtq.quantize with FP8_DEFAULT_CFG: max calibration of each linear's input over what
    forward_loop(model) runs). The model is modified in place (quantizers inserted): pass a copy you can drop.
    Returns module name (on-disk form) -> scale = amax / 448 (fused groups get their members' max)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import modelopt.torch.quantization as mtq
        from modelopt.torch.quantization.nn.modules.quant_module import QuantModule
        from modelopt.torch.utils.distributed import ParallelState

    # modelopt prints progress to stdout, which is the JSON report of the tools that call this
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        # "no parallel_state is set": set just below, before calibration
        warnings.filterwarnings("ignore", message="Distributed training is initialized", category=UserWarning)
        mtq.quantize(model, {**mtq.FP8_DEFAULT_CFG, "algorithm": None})  # quantizers only, no calibration
        # this model lives on one rank: without a parallel state of its own, modelopt's max calibration
        # all-reduces every amax over torch.distributed's default group, which the other ranks never join
        for module in model.modules():
            if isinstance(module, QuantModule):
                module.parallel_state = ParallelState(data_parallel_group=-1)
        mtq.calibrate(model, "max", forward_loop)
    scales = {}
    for name, module in model.named_modules():
        if not quantized_weight(f"{name}.weight"):
            continue
        quantizer = getattr(module, "input_quantizer", None)
        amax = getattr(quantizer, "amax", None)
        if amax is None:
            raise FP8Error(
                f"modelopt calibration left {name} without an input amax: did forward_loop run the decoder?"
            )
        scales[canonical_name(name)] = amax.detach().float().clamp(min=AMAX_FLOOR).reshape(()) / E4M3_MAX
    # a fused layer has one input: its members' scales are one (max) scale
    return {name: max(scales[module_of(m)] for m in _fused_members(f"{name}.weight")) for name in scales}


def decoder_linear_shapes(hf_config) -> list[tuple[str, tuple[int, int]]]:
    """(HF on-disk name, [out, in]) of every FP8 weight of a Qwen-VL model, from its config alone (for
    checks before any weight is read)."""
    text = getattr(hf_config, "text_config", hf_config)
    hidden, heads, kv = text.hidden_size, text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    shapes = {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv * head_dim, hidden),
        "self_attn.v_proj": (kv * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (text.intermediate_size, hidden),
        "mlp.up_proj": (text.intermediate_size, hidden),
        "mlp.down_proj": (hidden, text.intermediate_size),
    }
    return [
        (f"model.layers.{i}.{linear}.weight", shape)
        for i in range(text.num_hidden_layers)
        for linear, shape in shapes.items()
    ]


def engine_dtype(model_dtype: str, weight_dtype: str) -> str:
    """The dtype the engines compute in: the actor's, except that FP8 engines take bf16 / fp16 activations
    only (vLLM's FP8 methods' get_supported_act_dtypes): an fp32 actor's FP8 engines run in bf16."""
    if weight_dtype == "fp8" and model_dtype not in ("bf16", "fp16"):
        return "bf16"
    return model_dtype


def checkpoint_format(fp8_dir: str | Path) -> str | None:
    """The FP8 format of an HF checkpoint by its config.json (None when it is not FP8)."""
    config = json.loads((Path(fp8_dir) / "config.json").read_text())
    q = config.get("quantization_config") or {}
    if q.get("quant_method") == "fp8" and q.get("weight_block_size") == [BLOCK, BLOCK]:
        return "block"
    if q.get("quant_method") == "modelopt" and q.get("quant_algo") == "FP8":
        return "modelopt"
    return None


def calibration_loop(dataset, prompts: int):
    """A modelopt forward loop over the first `prompts` samples of an RLDataset with a processor (prompt
    tokens and images: the activations the engine's prompts give)."""

    def loop(model) -> None:
        device = next(model.parameters()).device
        for i in range(min(prompts, len(dataset))):
            s = dataset[i]
            ids = torch.tensor([s["input_ids"]], device=device)
            kw = {
                "input_ids": ids,
                "mm_token_type_ids": torch.tensor([s["mm_token_type_ids"]], device=device),
            }
            if s.get("pixel_values") is not None:
                kw["pixel_values"] = s["pixel_values"].to(device, model.dtype)
                kw["image_grid_thw"] = s["image_grid_thw"].to(device)
            model(**kw)

    return loop


def prepare_engine_checkpoint(
    hf_dir: str | Path,
    out: str | Path,
    fmt: str,
    dataset=None,
    prompts: int = 64,
    device: str = "cpu",
    forward_loop=None,
) -> FP8Weights:
    """Write the FP8 checkpoint engines start from (`out`) from the HF checkpoint hf_dir, and return the
    FP8Weights that make every later sync's payload. modelopt: the activation scales are calibrated first,
    on `prompts` samples of `dataset` (an RLDataset with a processor), or by forward_loop(model), with the
    model in bf16 on `device`. Raises FP8Error (no calibration data for modelopt, block shapes the engines
    cannot hold)."""
    input_scales = {}
    if fmt == "modelopt":
        if forward_loop is None and (dataset is None or len(dataset) == 0):
            raise FP8Error(
                "modelopt FP8 needs calibration prompts (static activation scales): give a dataset"
            )
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.bfloat16).to(device).eval()
        input_scales = calibrate_input_scales(model, forward_loop or calibration_loop(dataset, prompts))
        del model
    weights = FP8Weights(fmt, input_scales)
    write_fp8_checkpoint(hf_dir, out, weights)
    return weights
