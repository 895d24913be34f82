"""Prompt building: the ids equal transformers' Qwen2_5_VLProcessor output on the same text and images."""

import numpy as np
import pytest
import torch

from mmr1_mega.data import DEFAULT_SYSTEM_PROMPT, build_messages, encode_prompt, expand_image_tokens
from mmr1_mega.data.prompts import render_chat
from tests.data.conftest import random_image


@pytest.mark.parametrize("num_images", [0, 1, 3])
def test_encoded_prompt_equals_processor_output(processor, num_images):
    rng = np.random.default_rng()
    images = [random_image(rng) for _ in range(num_images)]
    problem = "How many red shapes? " * int(rng.integers(1, 4))
    ours = encode_prompt(processor, problem, images)
    text = render_chat(processor, build_messages(problem, num_images, DEFAULT_SYSTEM_PROMPT), True)
    ref = processor(text=[text], images=images or None, return_tensors="pt")
    assert ours.input_ids == ref["input_ids"][0].tolist()
    assert ours.mm_token_type_ids == ref["mm_token_type_ids"][0].tolist()
    if num_images:
        assert torch.equal(ours.pixel_values, ref["pixel_values"].float())
        assert torch.equal(ours.image_grid_thw, ref["image_grid_thw"])


def test_each_image_expands_to_grid_over_merge_squared_tokens(processor):
    rng = np.random.default_rng()
    images = [random_image(rng) for _ in range(2)]
    ours = encode_prompt(processor, "<image> and <image>?", images)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    expected = sum(int(t * h * w) // 4 for t, h, w in ours.image_grid_thw.tolist())
    assert ours.input_ids.count(pad) == expected
    assert sum(ours.mm_token_type_ids) == expected


def test_image_markers_place_images_in_text_order():
    messages = build_messages("look <image> then <image> end", 2, None)
    kinds = [p["type"] for p in messages[0]["content"]]
    assert kinds == ["text", "image", "text", "image", "text"]


def test_images_without_markers_come_first():
    messages = build_messages("what?", 2, "sys")
    assert [p["type"] for p in messages[1]["content"]] == ["image", "image", "text"]


def test_marker_count_must_match_images():
    with pytest.raises(ValueError, match="markers"):
        build_messages("<image><image>", 1, None)


def test_expand_rejects_grid_count_mismatch():
    with pytest.raises(ValueError, match="images"):
        expand_image_tokens("<|image_pad|>", [[1, 2, 2], [1, 2, 2]], 2)
