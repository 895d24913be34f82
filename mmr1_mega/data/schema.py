"""The MMR1-RL record schema and its validation.

A record is a mapping with:
- "problem": non-empty text; "<image>" markers, if any, say where each image goes (else images come first);
- "answer": the ground truth (text or a number), non-empty;
- "images": a list (or a single value) of encoded bytes, file paths, or {"bytes": ..., "path": ...} dicts as
  `datasets` stores images (base64 text in JSON); may be empty for text-only prompts;
- optional "id" and "source".
Validation turns a record into an RLRecord or raises BadRecord with a reason that the loader counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mmr1_mega.data.config import DataConfig
from mmr1_mega.data.errors import BadRecord
from mmr1_mega.data.images import check_resized_size, grid_thw_for_size, load_image, num_image_tokens
from mmr1_mega.data.prompts import IMAGE_TOKEN, build_messages, render_chat

log = logging.getLogger(__name__)

NOT_A_RECORD = "not a record"
MISSING_ANSWER = "missing answer"
EMPTY_PROBLEM = "empty problem"
TOO_MANY_IMAGES = "too many images"
IMAGE_MARKER_MISMATCH = "image marker mismatch"
PROMPT_TOO_LONG = "prompt too long"


@dataclass
class RLRecord:
    """One validated RL prompt. images holds the raw sources (decoded again when the sample is built)."""

    problem: str
    answer: str
    images: list[Any]
    id: str
    source: str = ""
    base_dir: str | None = None


@dataclass
class SkipReport:
    """Counts of skipped records by reason, and the first few of them for the log."""

    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    kept: int = 0

    def add(self, where: str, error: BadRecord) -> None:
        """Count one skipped record; remember it if fewer than max_examples are remembered."""
        self.counts[error.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{where}: {error}")

    @property
    def skipped(self) -> int:
        """Number of skipped records."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line: kept / skipped, counts by reason."""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts.items()))
        return f"kept {self.kept}, skipped {self.skipped}" + (f" ({reasons})" if reasons else "")

    def log(self, name: str) -> None:
        """Log the summary (warning if anything was skipped) and the first few skipped records."""
        if self.skipped:
            log.warning("%s: %s; first skipped: %s", name, self.summary(), " | ".join(self.examples))
        else:
            log.info("%s: %s", name, self.summary())


def _as_list(images: Any) -> list[Any]:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def prompt_length(
    processor: Any, problem: str, image_sizes: list[tuple[int, int]], system_prompt: str
) -> int:
    """Tokens of the RL prompt, image tokens included, computed from image sizes without their pixels.

    Takes: processor, problem, (height, width) per image, system prompt. Returns: the token count.
    """
    text = render_chat(processor, build_messages(problem, len(image_sizes), system_prompt), True)
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    ip = processor.image_processor
    image_tokens = sum(num_image_tokens(grid_thw_for_size(h, w, ip), ip.merge_size) for h, w in image_sizes)
    pad_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return len(ids) - sum(1 for t in ids if t == pad_id) + image_tokens


def parse_rl_record(
    raw: Any, cfg: DataConfig, base_dir: str | None, default_id: str, processor: Any = None
) -> RLRecord:
    """Validate one raw row into an RLRecord.

    Takes: the row, the DataConfig (keys, limits), the folder relative image paths start from, an id to use
    if the row has none, and optionally a processor (then prompts over cfg.max_prompt_len are rejected).
    Returns: RLRecord. Raises: BadRecord with one of this module's reasons or those of images.load_image.
    """
    if isinstance(raw, BadRecord):
        raise raw
    if not isinstance(raw, dict):
        raise BadRecord(NOT_A_RECORD, f"got {type(raw).__name__}, expected an object")
    problem = raw.get(cfg.problem_key)
    if not isinstance(problem, str) or not problem.strip():
        raise BadRecord(EMPTY_PROBLEM, f"field {cfg.problem_key!r} is missing or blank")
    answer = raw.get(cfg.answer_key)
    if answer is None or isinstance(answer, (dict, list)) or not str(answer).strip():
        raise BadRecord(MISSING_ANSWER, f"field {cfg.answer_key!r} is missing or blank")
    images = _as_list(raw.get(cfg.images_key))
    if len(images) > cfg.max_images_per_sample:
        raise BadRecord(TOO_MANY_IMAGES, f"{len(images)} > max_images_per_sample={cfg.max_images_per_sample}")
    base = cfg.image_root if cfg.image_root is not None else base_dir
    sizes = []
    ip = processor.image_processor if processor is not None else None
    factor = ip.patch_size * ip.merge_size if ip is not None else 28
    for image in images:
        decoded = load_image(image, base, cfg.max_raw_pixels, cfg.max_aspect_ratio)
        check_resized_size(decoded.height, decoded.width, cfg.min_pixels, cfg.max_pixels, factor)
        sizes.append((decoded.height, decoded.width))
    try:
        build_messages(problem, len(images), None)
    except ValueError as e:
        raise BadRecord(IMAGE_MARKER_MISMATCH, str(e)) from None
    if processor is not None:
        n = prompt_length(processor, problem, sizes, cfg.system_prompt)
        if n > cfg.max_prompt_len:
            raise BadRecord(PROMPT_TOO_LONG, f"{n} tokens > max_prompt_len={cfg.max_prompt_len}")
    record_id = raw.get("id")
    return RLRecord(
        problem=problem,
        answer=str(answer).strip(),
        images=images,
        id=str(record_id) if record_id is not None else default_id,
        source=str(raw.get("source") or ""),
        base_dir=base,
    )
