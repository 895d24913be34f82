"""The JSON bodies the SGLang adapter sends, and the parsing of SGLang's answers.

Pinned to SGLang 0.5.23 (`sglang.srt.managers.io_struct`, `entrypoints/http_server.py`): each builder
names the request type whose fields it fills; tests/rollout check every body against those types as
they are written in the installed SGLang source. Pure functions of plain data (no HTTP, no GPU).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence

import torch

from mmr1_mega.rollout.protocol import EngineError, GenerationOutput, GenerationRequest, engine_prompt_ids

SGLANG_VERSION = "0.5.23"
GROUP_NAME = "mmr1_weight_update"


def _image_item(image) -> str:
    """An image as SGLang's image_data accepts it over HTTP: a path / URL string, or base64 PNG."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, bytes):
        return base64.b64encode(image).decode()
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # a PIL image
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sampling_params(r: GenerationRequest, sample: int) -> dict:
    """sglang.srt.sampling.sampling_params.SamplingParams fields for sample `sample` of request r.

    Seeded requests give sample i the seed seed + i, so the n samples differ but repeat across runs.
    """
    params = {
        "max_new_tokens": r.max_new_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "stop": list(r.stop),
        "stop_token_ids": list(r.stop_token_ids),
        "skip_special_tokens": True,
        "no_stop_trim": True,  # keep the stop string in the text: our token ids include it too
    }
    if r.seed is not None:
        params["sampling_seed"] = r.seed + sample
    return params


def _prompt(r: GenerationRequest, image_token_id: int | None) -> tuple[list[int], list[str]]:
    """A request's prompt ids as SGLang takes them (one placeholder per image) and its images."""
    return engine_prompt_ids(r, image_token_id, "SGLang"), [_image_item(im) for im in (r.images or [])]


def generate_payload(requests: Sequence[GenerationRequest], image_token_id: int | None = None) -> dict:
    """A batched GenerateReqInput body: each request's prompt repeated n times, one row per sample. A
    prompt with images is sent with one placeholder (image_token_id) per image: SGLang's Qwen-VL processor
    expands each itself (protocol.image_prompt_ids).

    Raises ValueError for a request SGLang's /generate cannot take (messages, images only given as
    processed pixel_values: SGLang processes images itself and needs GenerationRequest.images, or
    placeholders that do not match the images).
    """
    input_ids, images, params = [], [], []
    for r in requests:
        ids, row_images = _prompt(r, image_token_id)
        for i in range(r.n):
            input_ids.append(ids)
            images.append(row_images)  # [] for a row without images: SGLang 0.5.23 refuses None beside lists
            params.append(sampling_params(r, i))
    body = {
        "input_ids": input_ids,
        "sampling_params": params,
        "return_logprob": True,
        "logprob_start_len": -1,
    }
    if any(images):
        body["image_data"] = images
    return body


def sample_payloads(r: GenerationRequest, image_token_id: int | None = None) -> list[dict]:
    """The n single (un-batched) GenerateReqInput bodies of request r, one per sample: what sglang-router
    takes (its /generate parses sampling_params as one object, not a list) and forwards to a server. Same
    prompt, images and sampling parameters as those rows of generate_payload (images encoded once)."""
    ids, images = _prompt(r, image_token_id)
    common = {"input_ids": ids, "return_logprob": True, "logprob_start_len": -1}
    if images:
        common["image_data"] = images
    return [{**common, "sampling_params": sampling_params(r, j)} for j in range(r.n)]


def parse_generate_response(answer, requests: Sequence[GenerationRequest]) -> list[list[GenerationOutput]]:
    """Turn /generate's list of outputs (one per row of generate_payload) into n outputs per request.

    Each output's meta_info carries finish_reason {"type": "stop" | "length" | "abort", ...} and
    output_token_logprobs [[logprob, token_id, text], ...]. Raises EngineError on an aborted or
    malformed answer.
    """
    rows = answer if isinstance(answer, list) else [answer]
    expected = sum(r.n for r in requests)
    if len(rows) != expected:
        raise EngineError(f"SGLang returned {len(rows)} outputs for {expected} samples")
    out, k = [], 0
    for r in requests:
        out.append([parse_sample(row, r) for row in rows[k : k + r.n]])
        k += r.n
    return out


def parse_sample(row: dict, r: GenerationRequest) -> GenerationOutput:
    """One output of /generate (a row of a batched answer, or a single request's answer) for request r.
    Raises EngineError on an aborted or malformed output."""
    meta = row.get("meta_info", {})
    if r.images and meta.get("prompt_tokens") not in (None, len(r.prompt_ids)):
        raise EngineError(
            f"SGLang expanded the prompt's images to {meta['prompt_tokens']} prompt tokens, the "
            f"trainer to {len(r.prompt_ids)}: the engine's image processor resizes differently (set "
            "the model folder's preprocessor min_pixels / max_pixels to the run's data.min_pixels / "
            "max_pixels)"
        )
    reason = (meta.get("finish_reason") or {}).get("type")
    if reason not in ("stop", "length"):
        raise EngineError(f"SGLang finished a sample with {meta.get('finish_reason')!r}")
    lps = meta.get("output_token_logprobs") or []
    ids = list(row.get("output_ids") or [t[1] for t in lps])
    if len(lps) != len(ids):
        raise EngineError(f"SGLang returned {len(lps)} logprobs for {len(ids)} tokens")
    return GenerationOutput(
        token_ids=ids,
        text=row.get("text", ""),
        logprobs=[float(t[0]) for t in lps],
        finish_reason=reason,
        meta={"engine": "sglang", "id": meta.get("id")},
    )


# ---- weight updates ------------------------------------------------------------------------------


def update_from_tensor_payload(serialized_per_rank: list[str], flush_cache: bool = False) -> dict:
    """UpdateWeightsFromTensorReqInput: one base64 MultiprocessingSerializer payload per engine TP rank
    (a flattened bucket). The cache is flushed once at the end of an update, not per bucket."""
    return {
        "serialized_named_tensors": list(serialized_per_rank),
        "load_format": "flattened_bucket",
        "flush_cache": flush_cache,
    }


def init_group_payload(
    master_address: str,
    master_port: int,
    rank_offset: int,
    world_size: int,
    group_name: str = GROUP_NAME,
    backend: str = "nccl",
) -> dict:
    """InitWeightsUpdateGroupReqInput: the engine's TP ranks join a group where the trainer is rank 0."""
    return {
        "master_address": master_address,
        "master_port": int(master_port),
        "rank_offset": int(rank_offset),
        "world_size": int(world_size),
        "group_name": group_name,
        "backend": backend,
    }


def update_from_distributed_payload(
    bucket: Sequence[tuple[str, torch.Tensor]], group_name: str = GROUP_NAME, flush_cache: bool = False
) -> dict:
    """UpdateWeightsFromDistributedReqInput announcing one bucket broadcast as a flattened buffer."""
    return {
        "names": [n for n, _ in bucket],
        "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
        "shapes": [list(t.shape) for _, t in bucket],
        "group_name": group_name,
        "flush_cache": flush_cache,
        "load_format": "flattened_bucket",
    }


def destroy_group_payload(group_name: str = GROUP_NAME) -> dict:
    """DestroyWeightsUpdateGroupReqInput."""
    return {"group_name": group_name}


def begin_update_payload(selector: str = "all") -> dict:
    """BeginWeightUpdateReqInput: open the weight-update session (target and draft models)."""
    return {"selector": selector}


def end_update_payload() -> dict:
    """EndWeightUpdateReqInput (no fields)."""
    return {}


def pause_payload(mode: str = "retract") -> dict:
    """PauseGenerationReqInput: retract keeps running requests (recomputed after the update)."""
    return {"mode": mode}


def continue_payload() -> dict:
    """ContinueGenerationReqInput."""
    return {"torch_empty_cache": True}


def memory_payload(tags: Sequence[str] | None = None) -> dict:
    """Release/ResumeMemoryOccupationReqInput; tags among "weights", "kv_cache" (None: all)."""
    return {"tags": list(tags) if tags is not None else None}
