"""SFT (cold start) data in MMR1-SFT style: {"messages": [...], "images": [...]}.

Message content is either a list of parts ({"type": "image"} / {"type": "text", "text": ...}) or a string
whose "<image>" markers place the images; images are used in order. The conversation is rendered with the
processor's chat template and tokenized turn by turn, so assistant turns get exactly the ids the model sees
(and must produce) at rollout time, where generation starts after "<|im_start|>assistant\\n". The loss covers
each assistant turn's content and its end-of-turn token; everything else is labelled -100.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmr1_mega.data.config import DataConfig
from mmr1_mega.data.errors import BadRecord, DataError
from mmr1_mega.data.images import load_image, preprocess_images
from mmr1_mega.data.prompts import (
    IMAGE_TOKEN,
    expand_image_tokens,
    mm_token_type_ids,
    render_chat,
    special_token_id,
    text_to_content,
)
from mmr1_mega.data.readers import read_rows
from mmr1_mega.data.schema import NOT_A_RECORD, TOO_MANY_IMAGES, SkipReport

IGNORE_INDEX = -100
NO_ASSISTANT_TURN = "no assistant turn"
BAD_MESSAGES = "bad messages"
IMAGE_COUNT_MISMATCH = "image count mismatch"
SEQUENCE_TOO_LONG = "sequence too long"
END_OF_TURN = "<|im_end|>"


@dataclass
class EncodedConversation:
    """input_ids, labels (IGNORE_INDEX off the assistant turns; not shifted), mm_token_type_ids: list[int];
    pixel_values [patches, C*T*P*P]; image_grid_thw [images, 3]."""

    input_ids: list[int]
    labels: list[int]
    mm_token_type_ids: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


def normalize_messages(messages: Any, system_prompt: str | None) -> list[dict]:
    """Messages with list-of-parts content, and `system_prompt` first when the data has no system turn.

    Raises: BadRecord(bad messages / no assistant turn) for malformed conversations.
    """
    if not isinstance(messages, list) or not messages:
        raise BadRecord(BAD_MESSAGES, "'messages' must be a non-empty list")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRecord(BAD_MESSAGES, "each message needs a role of system / user / assistant")
        content = m.get("content")
        if isinstance(content, str):
            content = text_to_content(content, content.count("<image>"))
        if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
            raise BadRecord(BAD_MESSAGES, f"{m['role']} content must be a string or a list of parts")
        out.append({"role": m["role"], "content": content})
    if not any(m["role"] == "assistant" and _text_of(m).strip() for m in out):
        raise BadRecord(NO_ASSISTANT_TURN, "the conversation has no non-empty assistant message")
    if system_prompt and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return out


def _text_of(message: dict) -> str:
    return "".join(p.get("text", "") for p in message["content"] if p.get("type", "text") == "text")


def _count_images(messages: list[dict]) -> int:
    return sum(1 for m in messages for p in m["content"] if p.get("type") == "image" or "image" in p)


def _segments(processor: Any, messages: list[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, trained) pieces whose concatenation is the full render."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for k, message in enumerate(messages):
        full = render_chat(processor, messages[: k + 1], add_generation_prompt=False)
        if message["role"] == "assistant":
            prompt = render_chat(processor, messages[:k], add_generation_prompt=True)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError(
                    "the chat template does not render conversations prefix by prefix; use a Qwen-style template"
                )
            reply = full[len(prompt) :]
            cut = reply.rfind(END_OF_TURN)
            cut = len(reply) if cut < 0 else cut + len(END_OF_TURN)
            pieces += [(prompt[len(done) :], False), (reply[:cut], True), (reply[cut:], False)]
        else:
            if not full.startswith(done):
                raise DataError(
                    "the chat template does not render conversations prefix by prefix; use a Qwen-style template"
                )
            pieces.append((full[len(done) :], False))
        done = full
    return [(text, trained) for text, trained in pieces if text]


def encode_conversation(processor: Any, messages: list[dict], images: list) -> EncodedConversation:
    """Token ids and labels of a conversation with its images.

    Takes: a Qwen-VL processor, normalized messages (see normalize_messages), RGB PIL images in order.
    Returns: EncodedConversation; labels equal input_ids on assistant content + end-of-turn tokens.
    Raises: BadRecord(image count mismatch) if image parts and images differ in number.
    """
    if _count_images(messages) != len(images):
        raise BadRecord(IMAGE_COUNT_MISMATCH, f"{_count_images(messages)} image parts, {len(images)} images")
    pixel_values, grid = preprocess_images(images, processor.image_processor)
    grids = grid.tolist()
    tokenizer, merge = processor.tokenizer, processor.image_processor.merge_size
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in _segments(processor, messages):
        n = text.count(IMAGE_TOKEN)
        text, grids = expand_image_tokens(text, grids[:n], merge), grids[n:]
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    types = mm_token_type_ids(
        ids, special_token_id(tokenizer, IMAGE_TOKEN), special_token_id(tokenizer, "<|video_pad|>")
    )
    return EncodedConversation(ids, labels, types, pixel_values, grid)


class SFTDataset:
    """Validated SFT conversations from one or more files; dataset[i] encodes conversation i.

    Every record is encoded once at load (to validate images and length); samples are encoded again on access.
    """

    def __init__(self, files: Sequence[str], cfg: DataConfig, processor: Any, name: str = "sft") -> None:
        """Read and validate `files`.

        Takes: data files (see readers.read_rows), DataConfig (system_prompt is added to conversations without
        a system turn; max_seq_len bounds the length), a Qwen-VL processor, a name for the log.
        Raises: DataError if no file is given, a file is missing / unreadable, or has no usable record.
        """
        cfg.validate()
        if isinstance(files, str):
            files = [files]
        if not files:
            raise DataError(f"{name}: no SFT files given; set data.sft_files")
        self.cfg, self.processor, self.name = cfg, processor, name
        self.records: list[tuple[list[dict], list[Any], str | None]] = []
        self.report = SkipReport(cfg.max_reported_bad)
        for path in files:
            self._load_file(path)
        self.report.log(name)

    def _load_file(self, path: str) -> None:
        base_dir = None if path.startswith("hf:") else os.path.dirname(os.path.abspath(path))
        base_dir = self.cfg.image_root if self.cfg.image_root is not None else base_dir
        kept = 0
        first_error = None
        for row_no, raw in enumerate(read_rows(path)):
            try:
                messages, images = self._parse(raw)
                self._encode(messages, images, base_dir)
            except BadRecord as e:
                self.report.add(f"{path} row {row_no}", e)
                first_error = first_error or f"{path} row {row_no}: {e}"
                continue
            self.records.append((messages, images, base_dir))
            kept += 1
        self.report.kept += kept
        if kept == 0:
            raise DataError(
                f"{path}: no usable SFT record ({first_error or 'empty file'}). Fix or drop the file"
            )

    def _parse(self, raw: Any) -> tuple[list[dict], list[Any]]:
        if isinstance(raw, BadRecord):
            raise raw
        if not isinstance(raw, dict):
            raise BadRecord(NOT_A_RECORD, f"got {type(raw).__name__}, expected an object")
        messages = normalize_messages(raw.get("messages"), self.cfg.system_prompt)
        images = raw.get(self.cfg.images_key) or []
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(images) > self.cfg.max_images_per_sample:
            raise BadRecord(
                TOO_MANY_IMAGES, f"{len(images)} > max_images_per_sample={self.cfg.max_images_per_sample}"
            )
        return messages, images

    def _encode(self, messages: list[dict], images: list[Any], base_dir: str | None) -> EncodedConversation:
        decoded = [
            load_image(x, base_dir, self.cfg.max_raw_pixels, self.cfg.max_aspect_ratio) for x in images
        ]
        encoded = encode_conversation(self.processor, messages, decoded)
        if len(encoded.input_ids) > self.cfg.max_seq_len:
            raise BadRecord(
                SEQUENCE_TOO_LONG, f"{len(encoded.input_ids)} tokens > max_seq_len={self.cfg.max_seq_len}"
            )
        return encoded

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample `index` as a dict of EncodedConversation's fields plus "index".

        Raises: IndexError out of range; DataError if its images can no longer be read.
        """
        if not -len(self.records) <= index < len(self.records):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self.records)} records")
        messages, images, base_dir = self.records[index]
        try:
            encoded = self._encode(messages, images, base_dir)
        except BadRecord as e:
            raise DataError(f"{self.name}: record {index} became unusable after loading ({e})") from None
        return {"index": index, **encoded.__dict__}
