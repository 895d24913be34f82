"""A synthetic visual counting task for the CPU demo, drawn locally with PIL.

Each image shows shapes (circles, squares, triangles), at most one per cell of a grid whose cell is 28 pixels by
default: one Qwen-VL *merged* token (2x2 patches of 14 px), so each image token sees at most one shape. The
shapes come in a few colours; the question asks how many shapes of one colour there are. Answers are single
digits, so the answer space is small and the reward (mmr1_mega.reward) checks them exactly. Difficulty levels:

    level 1: 2x2 cells (56x56 px), 1-3 shapes of the asked colour, no other colour
    level 2: 2x2 cells (56x56 px), 1-3 shapes of the asked colour, 1 distractor of another colour
    level 3: 3x3 cells (84x84 px), 1-5 shapes of the asked colour, 1-4 distractors

Cold-start answers can come from a simulated *weak teacher* (teacher_error > 0): on an image with distractors it
counts every shape instead of the asked colour with that probability, the way distilled cold-start data carries a
teacher's systematic mistakes. The RL prompts and validation answers are always the true counts (the verifier's
ground truth), so GRPO can correct what SFT copied from the teacher.

Everything is a function of the seed: the same seed writes byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from mmr1_mega.models.presets import PATCH_SIZE

CELL = 28  # default pixels per grid cell = one merged Qwen-VL token (patch 14 x merge 2): a shape never straddles two
COLORS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (230, 190, 20)}
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
LEVELS = {
    1: {"cells": 2, "count": (1, 3), "distractors": (0, 0)},
    2: {"cells": 2, "count": (1, 3), "distractors": (1, 1)},
    3: {"cells": 3, "count": (1, 5), "distractors": (1, 4)},
}
QUESTION = "<image>How many {color} shapes are in the image?"


@dataclass
class SyntheticConfig:
    """Sizes and seed of the generated task. sft_levels defaults to levels."""

    seed: int = 0
    num_train: int = 2000
    num_val: int = 200
    num_sft: int = 1000
    levels: tuple[int, ...] = (1, 2, 3)
    sft_levels: tuple[int, ...] | None = None
    cell: int = CELL
    teacher_error: float = 0.0
    teacher_error_levels: tuple[int, ...] | None = None
    target_colors: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> SyntheticConfig:
        """Check counts and levels; returns self. Raises ValueError naming the bad field."""
        for name in ("num_train", "num_val", "num_sft"):
            if getattr(self, name) < 0:
                raise ValueError(f"synthetic.{name} must be >= 0")
        for lv in tuple(self.levels) + tuple(self.sft_levels or ()):
            if lv not in LEVELS:
                raise ValueError(f"synthetic level {lv} unknown; use one of {sorted(LEVELS)}")
        if not 0.0 <= self.teacher_error <= 1.0:
            raise ValueError(f"synthetic.teacher_error must be in [0, 1], got {self.teacher_error}")
        for c in self.target_colors or ():
            if c not in COLORS:
                raise ValueError(
                    f"synthetic.target_colors: unknown colour {c!r}; use some of {sorted(COLORS)}"
                )
        if self.cell < 7:
            raise ValueError(f"synthetic.cell must be >= 7 pixels, got {self.cell}")
        if not self.levels:
            raise ValueError("synthetic.levels is empty; use e.g. (1, 2, 3)")
        return self

    def image_sides(self) -> tuple[int, int]:
        """(smallest, largest) image side in pixels over the RL and SFT levels."""
        sides = [LEVELS[lv]["cells"] * self.cell for lv in tuple(self.levels) + tuple(self.sft_levels or ())]
        return min(sides), max(sides)


def _draw(
    draw: ImageDraw.ImageDraw, shape: str, cell_x: int, cell_y: int, color: tuple[int, int, int], cell: int
) -> None:
    margin = max(2, cell // 7)
    x0, y0 = cell_x * cell + margin, cell_y * cell + margin
    x1, y1 = x0 + cell - 2 * margin - 1, y0 + cell - 2 * margin - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "square":
        draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=color)
    else:
        draw.polygon(((x0 + x1) // 2, y0, x1, y1, x0, y1), fill=color)


def make_count_example(
    rng: random.Random, level: int, cell: int = CELL, target_colors: tuple[str, ...] | None = None
) -> tuple[Image.Image, str, str, dict[str, Any]]:
    """One example of `level`.

    Takes: a random.Random (all randomness comes from it), the level, the cell size in pixels, the colours a
    question may ask about (default: all; distractors take the other colours).
    Returns: (RGB image, problem text with an "<image>" marker, answer digit as text, metadata: color, count,
    distractors, level).
    """
    spec = LEVELS[level]
    cells_per_side = spec["cells"]
    target = rng.choice(sorted(target_colors or COLORS))
    count = rng.randint(*spec["count"])
    distractors = rng.randint(*spec["distractors"])
    cells = rng.sample(
        [(x, y) for y in range(cells_per_side) for x in range(cells_per_side)], count + distractors
    )
    image = Image.new("RGB", (cells_per_side * cell,) * 2, BACKGROUND)
    draw = ImageDraw.Draw(image)
    others = [c for c in sorted(COLORS) if c != target]
    for i, (cx, cy) in enumerate(cells):
        color = target if i < count else rng.choice(others)
        _draw(draw, rng.choice(SHAPES), cx, cy, COLORS[color], cell)
    meta = {"color": target, "count": count, "distractors": distractors, "level": level}
    return image, QUESTION.format(color=target), str(count), meta


def worked_answer(color: str, count: int) -> str:
    """The SFT target in the paper's format: short reasoning in <think>, the digit boxed in <answer>."""
    return f"<think>I count the {color} shapes: {count}.</think><answer>\\boxed{{{count}}}</answer>"


def synthetic_corpus() -> list[str]:
    """Texts of the task (questions and worked answers of every colour and count) for tokenizer merges."""
    texts = []
    for color in sorted(COLORS):
        texts.append(QUESTION.format(color=color).replace("<image>", ""))
        texts += [worked_answer(color, n) for n in range(1, 10)]
    return texts


def _save_png(image: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format="PNG", optimize=False)


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def _split_rows(
    out_dir: str,
    split: str,
    n: int,
    levels: tuple[int, ...],
    seed: int,
    cell: int = CELL,
    teacher_error: float = 0.0,
    target_colors: tuple[str, ...] | None = None,
    teacher_error_levels: tuple[int, ...] | None = None,
) -> tuple[list, list]:
    """RL rows and SFT rows of one split (both come from the same drawn examples). With teacher_error > 0 the
    SFT answer of an image with distractors counts every shape with that probability (a weak teacher)."""
    rng = random.Random(f"{seed}-{split}")  # string seeds hash deterministically (sha512), not via hash()
    teacher = random.Random(
        f"{seed}-{split}-teacher"
    )  # own stream: the images do not depend on the error rate
    rl_rows, sft_rows = [], []
    for i in range(n):
        level = levels[i % len(levels)]
        image, problem, answer, meta = make_count_example(rng, level, cell, target_colors)
        rel = f"images/{split}/{i:06d}.png"
        _save_png(image, os.path.join(out_dir, rel))
        rl_rows.append(
            {
                "id": f"{split}-{i:06d}",
                "problem": problem,
                "answer": answer,
                "images": [rel],
                "source": f"synthetic-count-l{level}",
                **meta,
            }
        )
        said = meta["count"]
        erring = teacher_error_levels is None or level in teacher_error_levels
        if teacher.random() < teacher_error and erring and meta["distractors"] > 0:
            said = meta["count"] + meta["distractors"]
        sft_rows.append(
            {
                "id": f"{split}-{i:06d}",
                "messages": [
                    {"role": "user", "content": problem},
                    {"role": "assistant", "content": worked_answer(meta["color"], said)},
                ],
                "images": [rel],
                "teacher_correct": said == meta["count"],
            }
        )
    return rl_rows, sft_rows


def generate(out_dir: str, cfg: SyntheticConfig | None = None) -> dict[str, str]:
    """Write the task: PNGs under out_dir/images/, RL prompts (MMR1-RL schema) in train.jsonl / val.jsonl,
    SFT conversations in sft_train.jsonl (worked answers) and sft_val.jsonl (for SFT validation loss).

    Takes: output folder, SyntheticConfig. Returns: {"train", "val", "sft_train", "sft_val"} -> file paths.
    The SFT examples are drawn from their own seed stream, so they do not repeat the RL training prompts.
    """
    cfg = (cfg or SyntheticConfig()).validate()
    os.makedirs(out_dir, exist_ok=True)
    sft_levels = tuple(cfg.sft_levels or cfg.levels)
    colors = tuple(cfg.target_colors) if cfg.target_colors else None
    levels = tuple(cfg.levels)
    train, _ = _split_rows(out_dir, "train", cfg.num_train, levels, cfg.seed, cfg.cell, 0.0, colors)
    val, sft_val = _split_rows(out_dir, "val", cfg.num_val, levels, cfg.seed, cfg.cell, 0.0, colors)
    _, sft_train = _split_rows(
        out_dir,
        "sft",
        cfg.num_sft,
        sft_levels,
        cfg.seed,
        cfg.cell,
        cfg.teacher_error,
        colors,
        tuple(cfg.teacher_error_levels) if cfg.teacher_error_levels else None,
    )
    paths = {
        name: os.path.join(out_dir, f"{name}.jsonl") for name in ("train", "val", "sft_train", "sft_val")
    }
    for name, rows in (("train", train), ("val", val), ("sft_train", sft_train), ("sft_val", sft_val)):
        _write_jsonl(paths[name], rows)
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: write the synthetic task (and optionally the demo processor). Returns the exit code."""
    parser = argparse.ArgumentParser(prog="mmr1-mega data synth", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-sft", type=int, default=1000)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sft-levels", type=int, nargs="+", default=None)
    parser.add_argument(
        "--teacher-error", type=float, default=0.0, help="weak-teacher error rate of the SFT answers"
    )
    parser.add_argument(
        "--family",
        default="qwen2_5_vl",
        choices=sorted(PATCH_SIZE),
        help="the model family the processor is for: its patch size, and the default cell (one merged token)",
    )
    parser.add_argument(
        "--cell", type=int, default=None, help="pixels per grid cell (default: one merged token, 2 x patch)"
    )
    parser.add_argument("--processor-dir", default=None, help="also build the small demo processor here")
    args = parser.parse_args(argv)
    patch = PATCH_SIZE[args.family]
    cfg = SyntheticConfig(
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_sft=args.num_sft,
        levels=tuple(args.levels),
        sft_levels=tuple(args.sft_levels) if args.sft_levels else None,
        cell=2 * patch if args.cell is None else args.cell,
        teacher_error=args.teacher_error,
    )
    paths = generate(args.out, cfg)
    if args.processor_dir:
        from mmr1_mega.data.prompts import DEFAULT_SYSTEM_PROMPT
        from mmr1_mega.data.tokenizer import build_processor

        smallest, largest = cfg.image_sides()
        build_processor(
            args.processor_dir,
            smallest**2,
            largest**2,
            patch_size=patch,
            corpus=synthetic_corpus() + [DEFAULT_SYSTEM_PROMPT],
        )
        paths["processor"] = args.processor_dir
    print(json.dumps(paths, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
