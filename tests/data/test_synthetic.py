"""Synthetic counting task: deterministic from the seed, answers true to the image, verified by the reward."""

import filecmp
import json
import os
import random
import re

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


def _count_colour_cells(image, color, cell=CELL):
    """Independent count: cells of the grid that contain a pixel of exactly `color`."""
    a = np.asarray(image)
    cells = a.shape[0] // cell
    return sum(
        bool((a[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell] == COLORS[color]).all(-1).any())
        for y in range(cells)
        for x in range(cells)
    )


def _count_shapes(image, cell=CELL):
    a = np.asarray(image)
    cells = a.shape[0] // cell
    return sum(
        bool((a[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell] != 255).any())
        for y in range(cells)
        for x in range(cells)
    )


@pytest.mark.parametrize("cell", [CELL, 14])
@pytest.mark.parametrize("level", sorted(LEVELS))
def test_answer_is_the_number_of_shapes_of_the_asked_colour(level, cell):
    rng = random.Random()
    for _ in range(20):
        image, problem, answer, meta = make_count_example(rng, level, cell)
        assert meta["color"] in problem and "<image>" in problem
        assert image.size == (LEVELS[level]["cells"] * cell,) * 2
        assert _count_colour_cells(image, meta["color"], cell) == int(answer)
        assert _count_shapes(image, cell) == int(answer) + meta["distractors"]
        lo, hi = LEVELS[level]["count"]
        assert lo <= int(answer) <= hi


def test_target_colours_restrict_the_question_and_never_colour_a_distractor():
    rng = random.Random()
    for _ in range(30):
        image, problem, answer, meta = make_count_example(rng, 3, CELL, ("red",))
        assert meta["color"] == "red" and "red" in problem
        assert _count_colour_cells(image, "red") == int(answer)


def _sft_rows(path, root):
    """(asked colour, answer said, image, teacher_correct) of each SFT conversation."""
    from PIL import Image

    out = []
    for line in open(path):
        row = json.loads(line)
        color = re.search(r"How many (\w+) shapes", row["messages"][0]["content"]).group(1)
        said = int(re.search(r"boxed\{(\d+)\}", row["messages"][-1]["content"]).group(1))
        out.append((color, said, Image.open(os.path.join(root, row["images"][0])), row["teacher_correct"]))
    return out


def test_weak_teacher_counts_every_shape_on_the_chosen_levels_only(tmp_path):
    seed = random.randint(0, 10**6)
    base = {"seed": seed, "num_train": 5, "num_val": 5, "num_sft": 60, "levels": (1, 2, 3)}
    honest = generate(str(tmp_path / "h"), SyntheticConfig(**base))
    weak = generate(
        str(tmp_path / "w"), SyntheticConfig(**base, teacher_error=1.0, teacher_error_levels=(3,))
    )
    # the images, RL prompts and validation answers do not depend on the teacher
    for name in ("train", "val", "sft_val"):
        assert filecmp.cmp(honest[name], weak[name], shallow=False)
    for color, said, image, correct in _sft_rows(honest["sft_train"], tmp_path / "h"):
        assert correct and said == _count_colour_cells(image, color)
    for color, said, image, correct in _sft_rows(weak["sft_train"], tmp_path / "w"):
        if image.size[0] == 3 * CELL:  # level 3 (always has distractors): the weak teacher counts every shape
            assert said == _count_shapes(image) and not correct
        else:
            assert said == _count_colour_cells(image, color) and correct
    # error rate 0.5 on every level: only images with distractors can be wrong, about half of them are
    half = generate(str(tmp_path / "p"), SyntheticConfig(**base, teacher_error=0.5))
    rows = _sft_rows(half["sft_train"], tmp_path / "p")
    eligible = [r for r in rows if _count_shapes(r[2]) > _count_colour_cells(r[2], r[0])]
    assert all(r[3] for r in rows if r not in eligible)
    wrong = [r for r in eligible if not r[3]]
    assert all(r[1] == _count_shapes(r[2]) for r in wrong)
    # wrong ~ Binomial(n, teacher_error): within 5 standard deviations (a chance failure ~6e-7 per run)
    n, p = len(eligible), 0.5
    assert abs(len(wrong) / n - p) <= 5 * (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"teacher_error": 1.5}, "teacher_error"),
        ({"target_colors": ("purple",)}, "purple"),
        ({"cell": 3}, "cell"),
    ],
)
def test_bad_synthetic_settings_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**bad).validate()


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


def test_the_shipped_demo_config_is_valid_and_its_images_fit_its_pixel_limits(tmp_path):
    import yaml

    from mmr1_mega.config import load_config
    from mmr1_mega.trainer.demo import DEMO_CONFIG, synthetic_config

    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    syn = synthetic_config(demo, seed=3)
    assert syn.seed == 3 and syn.teacher_error > 0 and syn.target_colors == ("red",)
    assert demo["grpo"]["data"]["max_pixels"] == demo["synthetic"]["max_pixels"]
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(demo["grpo"]))
    cfg = load_config(tmp_path / "grpo.yaml", ["model.hf_path=unused"])
    assert cfg.train.ppo_mini_batches >= 2  # clipping is live, so the clip-fraction curves mean something
    assert cfg.sft.steps * cfg.sft.batch_size <= 4 * syn.num_sft


def test_demo_synthetic_section_errors_name_the_problem():
    from mmr1_mega.trainer.demo import synthetic_config

    base = {"levels": [1, 3], "min_pixels": 3136, "max_pixels": 3136}
    with pytest.raises(ValueError, match="widen them"):
        synthetic_config({"synthetic": base}, 0)
    with pytest.raises(ValueError, match="unknown synthetic keys"):
        synthetic_config({"synthetic": {**base, "max_pixels": 7056, "teacher_eror": 0.5}}, 0)
    assert synthetic_config({"synthetic": {**base, "max_pixels": 7056}}, 0).levels == (1, 3)


@pytest.mark.parametrize("family,patch", [("qwen2_5_vl", 14), ("qwen3_vl", 16)])
def test_data_synth_builds_the_family_processor_one_merged_token_per_cell(tmp_path, capsys, family, patch):
    from PIL import Image

    from mmr1_mega.data.synthetic import main
    from mmr1_mega.data.tokenizer import load_processor

    out, proc_dir = tmp_path / "data", tmp_path / "proc"
    args = ["--out", str(out), "--num-train", "4", "--num-val", "2", "--num-sft", "2", "--levels", "1", "3"]
    assert main([*args, "--family", family, "--processor-dir", str(proc_dir)]) == 0
    paths = json.loads(capsys.readouterr().out)
    processor = load_processor(str(proc_dir))
    assert processor.image_processor.patch_size == patch
    rows = [json.loads(line) for line in open(paths["train"])]
    assert len(rows) == 4
    for row in rows:
        image = Image.open(os.path.join(os.path.dirname(paths["train"]), row["images"][0])).convert("RGB")
        assert image.size[0] % (2 * patch) == 0  # the default cell is one merged token
        grid = processor.image_processor(images=[image])["image_grid_thw"][0].tolist()
        cells = image.size[0] // (2 * patch)
        assert grid == [1, 2 * cells, 2 * cells]  # each cell is exactly one merged token, unresized
