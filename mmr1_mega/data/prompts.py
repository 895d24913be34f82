"""Prompts: the default system prompt (MMR1's think / answer / boxed format), chat messages with images, and
prompt token ids with each image placeholder expanded to its <|image_pad|> tokens as Qwen2.5-VL's processor
does (replace_image_token: grid_t * grid_h * grid_w / merge_size**2 copies per image)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from mmr1_mega.data.images import num_image_tokens, preprocess_images

# Our wording of the output format the paper trains for (Sec. 4): reasoning in <think>, answer in <answer>
# with the final result in \boxed{}. The reward (mmr1_mega.reward.format) checks exactly this format.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. First think through the question step by step inside <think> </think> tags, "
    "then give the final answer inside <answer> </answer> tags, with the final result in \\boxed{}, "
    "i.e. <think> reasoning here </think><answer> \\boxed{result} </answer>."
)
IMAGE_PLACEHOLDER = "<image>"  # marks where an image goes in an MMR1-RL / LLaVA-style problem text
IMAGE_TOKEN = "<|image_pad|>"
_PLACEHOLDER_RE = re.compile(re.escape(IMAGE_PLACEHOLDER))


def text_to_content(text: str, num_images: int) -> list[dict[str, Any]]:
    """Chat content parts for a text whose images sit at its "<image>" markers.

    Takes: text, the number of images it comes with. Returns: [{"type": "image"}, {"type": "text", ...}, ...];
    with no marker in the text, all images come first (as MMR1-RL / EasyR1 data without markers).
    Raises: ValueError if the text has markers but not exactly num_images of them.
    """
    markers = len(_PLACEHOLDER_RE.findall(text))
    if markers == 0:
        return [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    if markers != num_images:
        raise ValueError(f"the text has {markers} {IMAGE_PLACEHOLDER} markers but {num_images} images")
    parts: list[dict[str, Any]] = []
    for i, piece in enumerate(_PLACEHOLDER_RE.split(text)):
        if i > 0:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def build_messages(
    problem: str, num_images: int, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
) -> list[dict]:
    """Chat messages of an RL prompt: an optional system message and one user turn with the images.

    Takes: problem text, number of images, system prompt (None or "" for none). Returns: messages list.
    Raises: ValueError on an image-marker / image-count mismatch.
    """
    messages: list[dict] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": text_to_content(problem, num_images)})
    return messages


def render_chat(processor: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat-template text of `messages` (one <|image_pad|> per image, not yet expanded)."""
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def expand_image_tokens(
    text: str, image_grid_thw: Any, merge_size: int, image_token: str = IMAGE_TOKEN
) -> str:
    """Replace the k-th image token of `text` with num_image_tokens(grid_thw[k]) copies of it.

    Takes: rendered text, image_grid_thw rows for its images in order, the merge size.
    Returns: the expanded text. Raises: ValueError if the text's image tokens and the grids differ in number.
    """
    pieces = text.split(image_token)
    if len(pieces) - 1 != len(image_grid_thw):
        raise ValueError(f"text has {len(pieces) - 1} {image_token} tokens but {len(image_grid_thw)} images")
    out = [pieces[0]]
    for grid, piece in zip(image_grid_thw, pieces[1:]):
        out.append(image_token * num_image_tokens(grid, merge_size))
        out.append(piece)
    return "".join(out)


def mm_token_type_ids(
    input_ids: list[int], image_token_id: int, video_token_id: int | None = None
) -> list[int]:
    """Per-token modality: 1 for image tokens, 2 for video tokens, 0 otherwise (as ProcessorMixin builds it)."""
    return [1 if t == image_token_id else 2 if t == video_token_id else 0 for t in input_ids]


def special_token_id(tokenizer: Any, token: str) -> int | None:
    """Id of `token`, or None when the vocabulary lacks it (instead of the unknown token's id)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (tokenizer.unk_token_id is not None and token_id == tokenizer.unk_token_id):
        return None
    return token_id


@dataclass
class EncodedPrompt:
    """Token ids of a prompt with images expanded, plus the pixels of its images.

    input_ids / mm_token_type_ids: list[int]; pixel_values [patches, C*T*P*P]; image_grid_thw [images, 3].
    """

    input_ids: list[int]
    mm_token_type_ids: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


def encode_text_with_images(processor: Any, text: str, images: list) -> EncodedPrompt:
    """Tokenize rendered chat text, expanding its image tokens for `images`.

    Takes: a Qwen-VL processor (tokenizer + image_processor), rendered text, RGB PIL images in order.
    Returns: EncodedPrompt. Raises: ValueError on an image-token / image-count mismatch.
    """
    tokenizer = processor.tokenizer
    pixel_values, grid = preprocess_images(images, processor.image_processor)
    expanded = expand_image_tokens(text, grid.tolist(), processor.image_processor.merge_size)
    ids = tokenizer(expanded, add_special_tokens=False)["input_ids"]
    image_id, video_id = (
        special_token_id(tokenizer, IMAGE_TOKEN),
        special_token_id(tokenizer, "<|video_pad|>"),
    )
    return EncodedPrompt(ids, mm_token_type_ids(ids, image_id, video_id), pixel_values, grid)


def encode_prompt(
    processor: Any, problem: str, images: list, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
) -> EncodedPrompt:
    """Token ids of an RL prompt (system + user turn + assistant generation prompt) and its image pixels.

    Takes: a Qwen-VL processor, problem text, RGB PIL images, system prompt. Returns: EncodedPrompt, equal to
    what the processor itself returns for the rendered text and images. Raises: ValueError on a mismatch
    between "<image>" markers and images.
    """
    text = render_chat(
        processor, build_messages(problem, len(images), system_prompt), add_generation_prompt=True
    )
    return encode_text_with_images(processor, text, images)
