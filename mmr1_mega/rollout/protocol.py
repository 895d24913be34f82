"""The one engine protocol: what the trainer asks of any rollout engine (local, SGLang, vLLM).

A request is one prompt (token ids, or chat messages the engine's processor renders) with its images,
sampled n times. Every engine returns, per request, n GenerationOutputs with the sampled token ids, their
text, per-token logprobs and why generation stopped.

Logprobs: every engine returns the log-probability of each sampled token under the model's raw
distribution (softmax of the unprocessed logits, i.e. temperature 1, no top-p / top-k), which is what
GRPO's old_logp is compared with in the importance ratio (DeepSeekMath GRPO, eq. 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

FINISH_REASONS = ("stop", "length")


class EngineError(RuntimeError):
    """An engine failed, refused a request or is unreachable.

    retryable: the failure is the server's (unreachable, timed out, an internal error), so the same request
    may succeed on another server; False when the server refused the request itself (e.g. HTTP 4xx).
    """

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class GenerationRequest:
    """One prompt, sampled n times.

    prompt_ids: prompt token ids (the trainer's path: the template already applied, image placeholders
    expanded as the processor does). messages: chat messages instead, rendered by the engine's processor
    (images then given in `images`). pixel_values / image_grid_thw: the prompt's images already processed
    (Qwen-VL patches), in the order their placeholders appear. images: raw images (PIL or paths) for
    engines that process them themselves (SGLang) or for `messages`.
    temperature 0 means greedy; top_k -1 and top_p 1 disable those filters. seed makes sampling
    reproducible: the same request with the same seed gives the same samples.
    """

    prompt_ids: list[int] | None = None
    messages: list[dict] | None = None
    images: list[Any] | None = None
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 128
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    seed: int | None = None

    def validate(self) -> None:
        """Raise ValueError with the offending field when the request cannot be served."""
        if (self.prompt_ids is None) == (self.messages is None):
            raise ValueError("GenerationRequest needs exactly one of prompt_ids or messages")
        if self.prompt_ids is not None and len(self.prompt_ids) == 0:
            raise ValueError("GenerationRequest.prompt_ids is empty: a prompt needs at least one token")
        if (self.pixel_values is None) != (self.image_grid_thw is None):
            raise ValueError(
                "GenerationRequest: pixel_values and image_grid_thw come together (both or neither)"
            )
        if self.n < 1:
            raise ValueError(f"GenerationRequest.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"GenerationRequest.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationRequest.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"GenerationRequest.top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationRequest.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class GenerationOutput:
    """One sample. token_ids: the generated tokens (a matched stop token or the token that completes a
    stop string included); logprobs[i]: raw log-probability of token_ids[i] (see module docstring);
    finish_reason: "stop" (EOS, a stop token or stop string) or "length" (max_new_tokens reached)."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What every rollout engine does. Weight updates come as a sequence of buckets between
    begin_update() and end_update() (an engine may pause generation and flush its cache there)."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[GenerationOutput]]:
        """Per request, its n samples in order. Raises EngineError or ValueError (bad request)."""
        ...

    def begin_update(self) -> None:
        """Get ready to receive weights (pause generation)."""
        ...

    def update_weights(self, bucket: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Load a bucket of (HF on-disk name, full tensor). Raises EngineError on unknown names / shapes."""
        ...

    def end_update(self) -> None:
        """All buckets sent: flush caches that hold results of the old weights, resume generation."""
        ...

    def release_memory(self) -> None:
        """Free accelerator memory (weights and KV cache) while the actor trains (colocation)."""
        ...

    def resume_memory(self) -> None:
        """Take the memory back before the next update / generation."""
        ...

    def flush_cache(self) -> None:
        """Drop cached prefixes / KV computed with the previous weights."""
        ...

    def health(self) -> bool:
        """True when the engine answers."""
        ...

    def shutdown(self) -> None:
        """Stop the engine and free everything it holds."""
        ...


def image_prompt_ids(prompt_ids: Sequence[int], image_token_id: int) -> tuple[list[int], int]:
    """The prompt with each run of image placeholder tokens collapsed to one placeholder, and the number of
    images (runs). vLLM and SGLang take prompts this way: their Qwen-VL processors expand each placeholder
    into one token per merged patch themselves (an expanded prompt would be expanded again)."""
    out: list[int] = []
    images = 0
    for t in prompt_ids:
        if t == image_token_id:
            if out and out[-1] == image_token_id:
                continue
            images += 1
        out.append(int(t))
    return out, images


def engine_prompt_ids(r: GenerationRequest, image_token_id: int | None, engine: str) -> list[int]:
    """The prompt ids a server engine (vLLM, SGLang: they process images themselves) takes for request r:
    the ids as they are for a text prompt, one placeholder per image otherwise (image_prompt_ids).

    Raises ValueError for a request such an engine cannot take: chat messages (render them first), images
    given only as processed pixel_values (pass GenerationRequest.images), or image placeholders that do not
    match the images. engine names the engine in the messages.
    """
    r.validate()
    if r.prompt_ids is None:
        raise ValueError(f"the {engine} engine takes prompt_ids (render messages with the processor first)")
    if r.pixel_values is not None and not r.images:
        raise ValueError(
            f"{engine} processes images itself: pass the raw images in GenerationRequest.images "
            "(paths, URLs or PIL images) along with the prompt ids"
        )
    if not r.images:
        return [int(t) for t in r.prompt_ids]
    if image_token_id is None:
        raise ValueError("a request with images needs the model's image_token_id")
    ids, n_images = image_prompt_ids(r.prompt_ids, image_token_id)
    if n_images != len(r.images):
        raise ValueError(
            f"the prompt has {n_images} image placeholder(s) (token {image_token_id}) but the request "
            f"carries {len(r.images)} image(s)"
        )
    return ids
