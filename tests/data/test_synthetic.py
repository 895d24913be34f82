"""Synthetic counting task: deterministic from the seed, answers true to the image, verified by the reward."""

import filecmp
import json
import os
import random

import numpy as np
import pytest

from mmr1_mega.data.synthetic import (
    CELL,
    COLORS,
    LEVELS,
    SyntheticConfig,
    generate,
    make_count_example,
    worked_answer,
)
from mmr1_mega.reward import compute_rewards


def _count_colour_cells(image, color):
    """Independent count: cells of the grid that contain a pixel of exactly `color`."""
    a = np.asarray(image)
    cells = a.shape[0] // CELL
    return sum(
        bool((a[y * CELL : (y + 1) * CELL, x * CELL : (x + 1) * CELL] == COLORS[color]).all(-1).any())
        for y in range(cells)
        for x in range(cells)
    )


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_answer_is_the_number_of_shapes_of_the_asked_colour(level):
    rng = random.Random()
    for _ in range(20):
        image, problem, answer, meta = make_count_example(rng, level)
        assert meta["color"] in problem and "<image>" in problem
        assert image.size == (LEVELS[level]["size"],) * 2
        assert _count_colour_cells(image, meta["color"]) == int(answer)
        lo, hi = LEVELS[level]["count"]
        assert lo <= int(answer) <= hi


def test_same_seed_writes_identical_files_and_other_seeds_differ(tmp_path):
    seed = random.randint(0, 10**6)
    small = {"num_train": 6, "num_val": 3, "num_sft": 4}
    a = generate(str(tmp_path / "a"), SyntheticConfig(seed=seed, **small))
    b = generate(str(tmp_path / "b"), SyntheticConfig(seed=seed, **small))
    c = generate(str(tmp_path / "c"), SyntheticConfig(seed=seed + 1, **small))
    for name in a:
        assert filecmp.cmp(a[name], b[name], shallow=False)
    for i in range(6):
        rel = f"images/train/{i:06d}.png"
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False)
    assert not filecmp.cmp(a["train"], c["train"], shallow=False)


def test_worked_answers_score_full_reward_and_wrong_ones_do_not(tmp_path):
    paths = generate(
        str(tmp_path), SyntheticConfig(seed=random.randint(0, 99), num_train=4, num_val=12, num_sft=2)
    )
    rl = [json.loads(line) for line in open(paths["val"])]
    sft = [json.loads(line) for line in open(paths["sft_val"])]
    replies = [row["messages"][-1]["content"] for row in sft]
    answers = [row["answer"] for row in rl]
    assert compute_rewards(replies, answers).total == [2.0] * len(rl)
    wrong = [worked_answer(r["color"], r["count"] % 9 + 1) for r in rl]
    assert compute_rewards(wrong, answers).total == [1.0] * len(rl)
    assert all(os.path.isfile(os.path.join(tmp_path, row["images"][0])) for row in rl)


def test_levels_cycle_through_the_split(tmp_path):
    paths = generate(str(tmp_path), SyntheticConfig(seed=1, num_train=6, num_val=1, num_sft=1, levels=(1, 3)))
    levels = [json.loads(line)["level"] for line in open(paths["train"])]
    assert levels == [1, 3, 1, 3, 1, 3]


def test_unknown_level_is_rejected():
    with pytest.raises(ValueError, match="level 7"):
        SyntheticConfig(levels=(7,)).validate()
