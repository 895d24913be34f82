"""Data configuration: files, image pixel limits (MMR1 Appendix C: 7,056 to 1,048,576), prompt limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmr1_mega.data.prompts import DEFAULT_SYSTEM_PROMPT

PAPER_MIN_PIXELS = 7056  # 84 x 84
PAPER_MAX_PIXELS = 1048576  # 1024 x 1024


@dataclass
class DataConfig:
    """Where the data is and how a sample is built.

    train_files / val_files: RL prompt files (.jsonl, .json, .parquet, a `datasets` save_to_disk folder, or
        "hf:<name>[:<split>]" when `datasets` is installed). sft_files: SFT chat files, same formats.
    min_pixels / max_pixels: Qwen-VL resize bounds per image (area after resize).
    max_raw_pixels: an image larger than this before resizing is a bad record (decode cost / bombs).
    max_aspect_ratio: Qwen-VL's smart_resize refuses images more elongated than 200:1.
    max_prompt_len: prompts longer than this (text + image tokens) are skipped as bad records.
    max_seq_len: SFT conversations longer than this are skipped.
    image_root: base folder of relative image paths; None means the data file's own folder.
    """

    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    sft_files: list[str] = field(default_factory=list)
    min_pixels: int = PAPER_MIN_PIXELS
    max_pixels: int = PAPER_MAX_PIXELS
    max_raw_pixels: int = 8192 * 8192
    max_aspect_ratio: float = 200.0
    max_prompt_len: int = 4096
    max_seq_len: int = 8192
    max_images_per_sample: int = 8
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    image_root: str | None = None
    problem_key: str = "problem"
    answer_key: str = "answer"
    images_key: str = "images"
    max_reported_bad: int = 5

    def validate(self) -> DataConfig:
        """Check the values; returns self. Raises ValueError naming the bad field and what to use."""
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"data.min_pixels={self.min_pixels} / data.max_pixels={self.max_pixels}: need "
                f"0 < min_pixels <= max_pixels (paper: {PAPER_MIN_PIXELS} and {PAPER_MAX_PIXELS})"
            )
        if self.max_raw_pixels < self.max_pixels:
            raise ValueError(
                f"data.max_raw_pixels={self.max_raw_pixels} is below data.max_pixels={self.max_pixels}; raise it"
            )
        if self.max_aspect_ratio < 1:
            raise ValueError(f"data.max_aspect_ratio={self.max_aspect_ratio}: must be >= 1 (Qwen-VL: 200)")
        for name in ("max_prompt_len", "max_seq_len", "max_images_per_sample", "max_reported_bad"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data.{name}={getattr(self, name)}: must be > 0")
        for name in ("train_files", "val_files", "sft_files"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"data.{name} is a string; give a list of files, e.g. [{value!r}]")
        return self
