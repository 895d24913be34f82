"""The local engine: a transformers Qwen-VL model in this process (CPU or one GPU).

Generation is transformers' own `generate` (KV cache, mrope positions, images) on left-padded batches:
the n samples of a request are n rows of one batch; requests that share sampling settings and carry no
seed share a batch. Seeded requests run alone under a forked RNG, so the same request with the same seed
gives the same samples whatever else is asked. Logprobs are the raw model's (see protocol.py): taken
from the unprocessed logits of each step, before temperature / top-p / top-k.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from mmr1_mega.models.hf_io import canonical_name
from mmr1_mega.rollout.protocol import EngineError, GenerationOutput, GenerationRequest
from mmr1_mega.sync.checksum import tensor_checksum

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
)


def _as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}")
    return DTYPES[dtype]


def _load_processor(hf_dir: Path):
    """The directory's processor (tokenizer + image processor), or its tokenizer alone, or None."""
    if not any((hf_dir / f).is_file() for f in _PROCESSOR_FILES):
        return None
    from transformers import AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(hf_dir)
    except (
        OSError,
        ValueError,
        TypeError,
        KeyError,
        ImportError,
    ):  # ImportError: a video processor without torchvision
        return AutoTokenizer.from_pretrained(hf_dir)


class LocalEngine:
    """A transformers model serving the Engine protocol in-process.

    Takes an HF directory (config + safetensors, optionally tokenizer / processor files), a device and a
    dtype ("fp32" | "bf16" | "fp16" | torch.dtype; None keeps the checkpoint's). Raises EngineError when
    the directory cannot be loaded.

    fp8 ("block" | "modelopt"): a STAND-IN for an FP8 engine, for CPU tests and demos. Weight updates must
    then carry exactly what an FP8 engine loads (quant/fp8.py `expected_tensors`: e4m3 decoder linears and
    their scales, checked as the real loaders would); the engine keeps those tensors (its checksums report
    them) and computes with their dequantized values in `dtype`. It models the weights' FP8 rounding only:
    a real FP8 engine also quantizes activations (per token group for block, by the static input scale for
    modelopt) and runs FP8 GEMMs.
    """

    def __init__(self, hf_dir: str | os.PathLike, device: str = "cpu", dtype="fp32", fp8: str | None = None):
        from transformers import AutoModelForImageTextToText

        self.hf_dir, self.device = Path(hf_dir), torch.device(device)
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(self.hf_dir, dtype=_as_dtype(dtype))
        except (OSError, ValueError) as e:
            raise EngineError(f"local engine cannot load {self.hf_dir}: {e}") from e
        self.model.to(self.device).eval()
        self.processor = _load_processor(self.hf_dir)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.config = self.model.config
        self._params = {canonical_name(n): p for n, p in self.model.named_parameters()}
        eos = self.model.generation_config.eos_token_id
        self.eos_token_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        pad = self.model.generation_config.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids or [0])[0]
        self._alive = True
        if fp8 is not None:
            from mmr1_mega.quant.fp8 import FORMATS

            if fp8 not in FORMATS:
                raise EngineError(f"local engine: fp8 must be one of {FORMATS} or None, got {fp8!r}")
        self.fp8 = fp8
        self._fp8_tensors: dict[str, torch.Tensor] = {}  # what FP8 updates delivered, by HF on-disk name
        self._fp8_pending: dict[str, dict[str, torch.Tensor]] = {}  # module -> parts received so far

    # ---- weights -------------------------------------------------------------------------------------

    def weight_names(self) -> list[str]:
        """The HF on-disk names of every parameter this engine holds."""
        return sorted(self._params)

    def state_dict_hf(self) -> dict[str, torch.Tensor]:
        """A copy of every parameter under its HF on-disk name."""
        return {n: p.detach().clone() for n, p in self._params.items()}

    def weight_checksums(self) -> dict[str, str]:
        """tensor_checksum of every parameter, by HF on-disk name; with fp8, of the FP8 weights and scales
        the updates delivered in place of the decoder linears' parameters."""
        sums = {n: tensor_checksum(p) for n, p in self._params.items()}
        if self.fp8 is not None:
            from mmr1_mega.quant.fp8 import quantized_weight

            sums = {n: v for n, v in sums.items() if not quantized_weight(n) or n not in self._fp8_tensors}
            sums.update({n: tensor_checksum(t) for n, t in self._fp8_tensors.items()})
        return sums

    def begin_update(self) -> None:
        """Nothing to pause: generation and updates run in the same thread."""

    def update_weights(self, bucket: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Copy each (HF name, tensor) into the model in place (cast to the engine's dtype / device).

        The whole bucket is checked before anything is copied, so a bad bucket leaves the weights as they
        were. Raises EngineError on an unknown name or a shape that differs from the model's.
        """
        self._check_alive()
        bucket = [(canonical_name(name), tensor) for name, tensor in bucket]  # released or on-disk names
        if self.fp8 is not None:
            bucket = self._fp8_parts(bucket)
        for name, tensor in bucket:
            if name not in self._params:
                raise EngineError(
                    f"local engine has no parameter {name!r} (it holds {len(self._params)}, e.g. "
                    f"{next(iter(sorted(self._params)))!r}): does the actor's model match {self.hf_dir}?"
                )
            if tuple(tensor.shape) != tuple(self._params[name].shape):
                raise EngineError(
                    f"{name}: update has shape {tuple(tensor.shape)} but the engine's parameter is "
                    f"{tuple(self._params[name].shape)}: does the actor's config match {self.hf_dir}?"
                )
        with torch.no_grad():
            for name, tensor in bucket:
                self._params[name].copy_(tensor)

    def _fp8_parts(self, bucket: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        """An FP8 update's bucket: every FP8 weight and scale checked against what the format's loader takes
        (names, dtypes, shapes) and held until its module is complete (a bucket may end between a weight and
        its scales); returns the bucket's high-precision tensors plus each completed module's dequantized
        weight. Nothing is held when a tensor is refused."""
        from mmr1_mega.quant.fp8 import dequantize, expected_tensors, quantized_weight, scale_names

        plain, parts = [], {}
        for name, tensor in bucket:
            if name in self._params and not quantized_weight(name):
                plain.append((name, tensor))
                continue
            weight = name if quantized_weight(name) else None
            if weight is None:  # a scale: <module>.<suffix> of a quantized <module>.weight
                module = name.rsplit(".", 1)[0]
                if quantized_weight(f"{module}.weight") and name in scale_names(self.fp8, f"{module}.weight"):
                    weight = f"{module}.weight"
            if weight is None or weight not in self._params:
                raise EngineError(
                    f"local engine (fp8 {self.fp8}) has no parameter or FP8 scale {name!r}: does the actor's model "
                    f"match {self.hf_dir} and the sync's FP8 format?"
                )
            dtype, shape = expected_tensors(self.fp8, weight, tuple(self._params[weight].shape))[name]
            if tensor.dtype != dtype or tuple(tensor.shape) != shape:
                raise EngineError(
                    f"{name}: an fp8 {self.fp8} engine loads {dtype} {shape}, the update has {tensor.dtype} "
                    f"{tuple(tensor.shape)}"
                )
            parts.setdefault(weight, {})[name] = tensor.detach().to("cpu", copy=True)
        ready = []
        for weight, got in parts.items():
            pending = self._fp8_pending.setdefault(weight, {})
            pending.update(got)
            want = expected_tensors(self.fp8, weight, tuple(self._params[weight].shape))
            if pending.keys() == want.keys():
                self._fp8_tensors.update(self._fp8_pending.pop(weight))
                scale = self._fp8_tensors[scale_names(self.fp8, weight)[0]]
                ready.append(
                    (weight, dequantize(self._fp8_tensors[weight], scale, self._params[weight].dtype))
                )
        return plain + ready

    def end_update(self) -> None:
        """Nothing cached across requests here (each generate builds its own KV cache). With fp8: raises
        EngineError when a module got only part of its FP8 tensors."""
        if self._fp8_pending:
            incomplete = sorted(self._fp8_pending)
            self._fp8_pending.clear()
            raise EngineError(
                f"fp8 update ended with modules missing their weight or scales: {incomplete[:4]}"
            )

    def flush_cache(self) -> None:
        """No prefix cache to drop: the KV cache lives only inside one generate call."""

    def release_memory(self) -> None:
        """Move the weights to the CPU while the actor trains (a no-op on a CPU engine)."""
        if self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def resume_memory(self) -> None:
        """Bring the weights back to the engine's device."""
        self.model.to(self.device)

    def health(self) -> bool:
        """True until shutdown()."""
        return self._alive

    def shutdown(self) -> None:
        """Drop the model."""
        self._alive = False
        self.model = None
        self._params = {}

    def _check_alive(self) -> None:
        if not self._alive:
            raise EngineError("the local engine was shut down: make a new one with make_engine(cfg)")

    # ---- generation ----------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[GenerationOutput]]:
        """Sample every request n times. Returns, per request, its n GenerationOutputs.

        Raises ValueError for an invalid request (e.g. stop strings without a tokenizer).
        """
        self._check_alive()
        for r in requests:
            r.validate()
            if r.stop and self.tokenizer is None:
                raise ValueError(f"stop strings {list(r.stop)} need a tokenizer, and {self.hf_dir} has none")
        results: list = [None] * len(requests)
        for group in _batches(requests):
            outs = self._generate_batch([requests[i] for i in group])
            for i, o in zip(group, outs):
                results[i] = o
        return results

    def _prompt(self, r: GenerationRequest) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        if r.prompt_ids is not None:
            return list(r.prompt_ids), r.pixel_values, r.image_grid_thw
        if self.processor is None:
            raise ValueError(f"a request with messages needs a processor, and {self.hf_dir} has none")
        text = self.processor.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
        kwargs = {"images": r.images} if r.images else {}
        enc = self.processor(text=[text], return_tensors="pt", **kwargs)
        return enc["input_ids"][0].tolist(), enc.get("pixel_values"), enc.get("image_grid_thw")

    def _generate_batch(self, reqs: list[GenerationRequest]) -> list[list[GenerationOutput]]:
        r0 = reqs[0]
        rows, pixels, grids = [], [], []
        for r in reqs:
            ids, pv, grid = self._prompt(r)
            for _ in range(r.n):
                rows.append(ids)
                if pv is not None:
                    pixels.append(pv)
                    grids.append(grid)
        width = max(len(x) for x in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(rows):  # left padding: every row's last prompt token in the same column
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention_mask[i, width - len(ids) :] = 1
        inputs = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            # without it Qwen2.5-VL silently uses 1-D positions (see shared notes)
            "mm_token_type_ids": (input_ids == self.config.image_token_id).long().to(self.device),
        }
        if pixels:
            inputs["pixel_values"] = torch.cat(pixels).to(self.device, self.model.dtype)
            inputs["image_grid_thw"] = torch.cat(grids).to(self.device)
        stop_ids = sorted(set(self.eos_token_ids) | set(r0.stop_token_ids))
        gen = self._generation_config(r0, stop_ids)
        extra = {"stopping_criteria": [_StopStrings(self.tokenizer, r0.stop, width)]} if r0.stop else {}
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]),
        ):
            if r0.seed is not None:
                torch.manual_seed(r0.seed)
            out = self.model.generate(**inputs, generation_config=gen, **extra)
        new = out.sequences[:, width:].cpu()
        logps = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.logits], dim=1).cpu()
        samples = [self._finish(new[i], logps[i], r0, set(stop_ids)) for i in range(len(rows))]
        grouped, k = [], 0
        for r in reqs:
            grouped.append(samples[k : k + r.n])
            k += r.n
        return grouped

    def _generation_config(self, r: GenerationRequest, stop_ids: list[int]):
        from transformers import GenerationConfig

        greedy = r.temperature == 0
        # every knob explicit: unset ones would be filled from the checkpoint's generation_config.json
        # (Qwen ships repetition_penalty / top_k there), and the samples would not follow the request
        sampling = {} if greedy else dict(temperature=r.temperature, top_p=r.top_p, top_k=max(r.top_k, 0))
        return GenerationConfig(
            max_new_tokens=r.max_new_tokens,
            do_sample=not greedy,
            **sampling,
            repetition_penalty=1.0,
            eos_token_id=stop_ids or None,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )

    def _finish(self, tokens: torch.Tensor, logps: torch.Tensor, r: GenerationRequest, stop_ids: set[int]):
        tokens = tokens.tolist()
        end, reason = len(tokens), "length"
        for i, t in enumerate(tokens):
            if t in stop_ids:
                end, reason = i + 1, "stop"
                break
        if r.stop:
            for i in range(end):
                if any(s in self.tokenizer.decode(tokens[: i + 1]) for s in r.stop):
                    end, reason = i + 1, "stop"
                    break
        if reason == "length" and end < r.max_new_tokens:
            raise EngineError(
                f"generation ended after {end} tokens without a stop: transformers stopped early"
            )
        kept = tokens[:end]
        lp = logps[torch.arange(end), torch.tensor(kept, dtype=torch.long)].tolist()
        text = self.tokenizer.decode(kept, skip_special_tokens=True) if self.tokenizer is not None else ""
        return GenerationOutput(token_ids=kept, text=text, logprobs=lp, finish_reason=reason)


class _StopStrings:
    """Stops a row once its decoded new text contains a stop string (transformers' StopStringCriteria
    needs tokenizer vocabularies it can parse; decoding works with any tokenizer)."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int):
        self.tokenizer, self.stop, self.width = tokenizer, list(stop), prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width :].tolist())
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def _sampling_key(r: GenerationRequest) -> tuple:
    return (r.temperature, r.top_p, r.top_k, r.max_new_tokens, tuple(r.stop), tuple(sorted(r.stop_token_ids)))


def _batches(requests: Sequence[GenerationRequest]) -> list[list[int]]:
    """Indices of requests that can share one generate call: same sampling settings, no seed."""
    groups: dict[tuple, list[int]] = {}
    out = []
    for i, r in enumerate(requests):
        if r.seed is not None:
            out.append([i])
        else:
            groups.setdefault(_sampling_key(r), []).append(i)
    return list(groups.values()) + out
