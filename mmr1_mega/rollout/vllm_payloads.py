"""The JSON bodies the vLLM adapter sends, and the parsing of vLLM's answers. Pure functions of plain data.

Pinned to vLLM 0.32's token-in / token-out endpoint `POST /inference/v1/generate` (`vllm serve
--enable-scale-out`; `vllm/entrypoints/scale_out/token_in_token_out/protocol.py::GenerateRequest`): one
prompt per request, as token ids, with its n samples in `sampling_params` (vLLM's SamplingParams fields) and
its images as `content_parts` (data URLs) that the server decodes and processes itself.

Images: vLLM's Qwen-VL processor expands each image placeholder of the prompt into one token per merged
patch itself, so the prompt is sent with one placeholder per image (image_prompt_ids) and the answer's
`prompt_token_ids` (asked with return_token_ids) are checked against our own expansion: a different count
means the engine's processor resizes images differently from the trainer's (pixel bounds).
"""

from __future__ import annotations

import base64
import io
import os

from mmr1_mega.rollout.protocol import EngineError, GenerationOutput, GenerationRequest, engine_prompt_ids

VLLM_VERSION = "0.32"
GENERATE_PATH = "/inference/v1/generate"


def image_url(image) -> str:
    """An image as a content part URL: a file path is read and sent as a data URL (the server
    may not see our files), bytes / PIL images a base64 PNG data URL; http(s) / data URLs pass through."""
    if isinstance(image, (str, os.PathLike)):
        s = os.fspath(image)
        if s.startswith(("http://", "https://", "data:")):
            return s
        with open(s, "rb") as f:
            image = f.read()
    if isinstance(image, bytes):
        from PIL import Image

        image = Image.open(io.BytesIO(image))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sampling_params(r: GenerationRequest) -> dict:
    """vllm.SamplingParams fields of request r: n samples, raw logprob of each sampled token (logprobs=0:
    the sampled token only; the server runs with --logprobs-mode raw_logprobs), stop strings kept in the
    text (our token ids include the tokens that complete them)."""
    params = {
        # vLLM refuses n > 1 with greedy sampling: its n samples are one sample (parse repeats it)
        "n": 1 if r.temperature == 0 else r.n,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "max_tokens": r.max_new_tokens,
        "stop": list(r.stop),
        "stop_token_ids": list(r.stop_token_ids),
        "include_stop_str_in_output": True,
        "skip_special_tokens": True,
        "logprobs": 0,
    }
    if r.seed is not None:
        params["seed"] = int(r.seed)
    return params


def generate_payload(r: GenerationRequest, image_token_id: int | None) -> dict:
    """The GenerateRequest body of one request.

    Raises ValueError for a request vLLM's endpoint cannot take: chat messages (render them first),
    images given only as processed pixel_values (vLLM processes images itself: pass
    GenerationRequest.images), or a prompt whose image placeholders do not match its images.
    """
    token_ids = engine_prompt_ids(r, image_token_id, "vLLM")  # validates r first
    body: dict = {"sampling_params": sampling_params(r), "output_mode": "text", "token_ids": token_ids}
    if r.images:
        body["content_parts"] = [{"type": "image_url", "url": image_url(im)} for im in r.images]
        body["return_token_ids"] = True
    return body


def parse_generate_response(answer: dict, r: GenerationRequest) -> list[GenerationOutput]:
    """The n GenerationOutputs of one /inference/v1/generate answer.

    Raises EngineError on an aborted or malformed answer, or when the engine expanded the image
    placeholders to a different prompt than ours (its processor resized the images differently).
    """
    if not isinstance(answer, dict) or "choices" not in answer:
        raise EngineError(f"vLLM answered without choices: {str(answer)[:300]}")
    if r.images and answer.get("prompt_token_ids") is not None:
        theirs = list(answer["prompt_token_ids"])
        if theirs != list(r.prompt_ids):
            raise EngineError(
                f"vLLM expanded the prompt's images to {len(theirs)} prompt tokens, the trainer to "
                f"{len(r.prompt_ids)}: the engine's image processor resizes differently (set the model "
                "folder's preprocessor min_pixels / max_pixels to the run's data.min_pixels / max_pixels)"
            )
    choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
    if r.temperature == 0 and len(choices) == 1:
        choices = choices * r.n  # greedy: n identical samples
    if len(choices) != r.n:
        raise EngineError(f"vLLM returned {len(choices)} samples for n={r.n}")
    out = []
    for c in choices:
        reason = c.get("finish_reason")
        if reason not in ("stop", "length"):
            raise EngineError(
                f"vLLM finished a sample with {reason!r} (stop_reason {c.get('stop_reason')!r})"
            )
        ids = [int(t) for t in c.get("token_ids") or []]
        content = (c.get("logprobs") or {}).get("content") or []
        if len(content) != len(ids):
            raise EngineError(f"vLLM returned {len(content)} logprobs for {len(ids)} tokens")
        out.append(
            GenerationOutput(
                token_ids=ids,
                text=c.get("text", ""),
                logprobs=[float(x["logprob"]) for x in content],
                finish_reason=reason,
                meta={"engine": "vllm", "id": answer.get("request_id"), "stop_reason": c.get("stop_reason")},
            )
        )
    return out


# ---- weights by CUDA IPC (vLLM's weight-transfer API, backend "ipc", packed mode) ---------------------------
# The server runs with --weight-transfer-config '{"backend": "ipc"}' and VLLM_ALLOW_INSECURE_SERIALIZATION=1
# (the handles travel pickled); the session is /init_weight_transfer_engine, /start_weight_update,
# /update_weights per bucket, /finish_weight_update (vllm/entrypoints/rl/online/api_router.py, 0.32).
# Packed: each bucket is one uint8 buffer; vLLM's consumer (packed_ipc_consumer) maps it by the handle of its
# own GPU (keyed by GPU UUID), splits it by byte sizes, views each piece as dtype and shape, and clones the
# tensors before it answers, so the sender may reuse the buffer for the next bucket.
IPC_BACKEND_CONFIG = '{"backend": "ipc"}'


def ipc_init_payload() -> dict:
    """The /init_weight_transfer_engine body: IPCWeightTransferInitInfo(packed=True)."""
    return {"init_info": {"packed": True}}


def pack_bucket(bucket) -> tuple:
    """(flat, meta): the bucket's tensors back to back as one uint8 tensor on their device, and the
    IPCWeightTransferUpdateInfo fields that describe it (names, dtype_names, shapes, tensor_sizes in bytes).

    vLLM views each piece in place as its dtype, which needs its byte offset to be a multiple of its
    element size, and it splits by the sizes alone (no room for padding). So the tensors go widest element
    first: every offset is then a sum of sizes that are multiples of the current element size. (In vLLM's
    own packing order a bf16 tensor of odd length followed by an fp32 one fails to unpack.)"""
    import torch

    parts, meta = [], {"names": [], "dtype_names": [], "shapes": [], "tensor_sizes": []}
    for name, t in sorted(bucket, key=lambda item: -item[1].element_size()):  # stable: the order otherwise
        flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
        parts.append(flat)
        meta["names"].append(name)
        meta["dtype_names"].append(str(t.dtype).split(".")[-1])  # torch.bfloat16 -> "bfloat16"
        meta["shapes"].append(list(t.shape))
        meta["tensor_sizes"].append(flat.numel())
    devices = {p.device for p in parts}
    if len(devices) != 1:
        raise ValueError(f"a bucket's tensors must share one device, got {sorted(map(str, devices))}")
    return torch.cat(parts), meta


def ipc_update_payload(meta: dict, handles: dict) -> dict:
    """The /update_weights body of one packed bucket: meta from pack_bucket, handles {GPU UUID: the
    rebuild_cuda_tensor args of that GPU's copy of the buffer}, pickled as vLLM's HTTP client does."""
    import pickle

    return {
        "update_info": {
            **meta,
            "ipc_handles_pickled": base64.b64encode(pickle.dumps(handles)).decode("ascii"),
        }
    }
