"""Offline tokenizer and processor: small vocabulary, lossless text, save / load round trip."""

import random
import string

import numpy as np
import pytest

from mmr1_mega.data import build_processor, build_tokenizer, load_processor
from mmr1_mega.data.tokenizer import QWEN_VL_SPECIAL_TOKENS, REASONING_TAGS
from tests.data.conftest import random_image


def test_vocabulary_is_small_and_special_tokens_are_single_ids(processor):
    tok = processor.tokenizer
    assert len(tok) <= 512
    for token in QWEN_VL_SPECIAL_TOKENS + REASONING_TAGS:
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_any_printable_text_round_trips(processor):
    rng = random.Random()
    text = "".join(rng.choice(string.printable) for _ in range(300)) + "<think>x</think><|im_end|>"
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode(ids) == text
    assert processor.tokenizer.unk_token_id not in ids


def test_digits_are_single_tokens(processor):
    ids = processor.tokenizer("12345", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5


def test_saved_processor_loads_offline_and_behaves_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    built = build_processor(
        str(tmp_path), 28 * 28, 56 * 56, corpus=["How many red shapes?"] * 3, vocab_size=200
    )
    loaded = load_processor(str(tmp_path))
    rng = np.random.default_rng()
    images = [random_image(rng)]
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many red shapes?<|im_end|>\n"
    a, b = built(text=[text], images=images), loaded(text=[text], images=images)
    assert list(a["input_ids"][0]) == list(b["input_ids"][0])
    assert np.array_equal(np.asarray(a["pixel_values"]), np.asarray(b["pixel_values"]))
    assert loaded.image_processor.size["longest_edge"] == 56 * 56
    assert loaded.chat_template == built.chat_template
    assert len(loaded.tokenizer) <= 200


def test_the_runs_pixel_bounds_replace_the_checkpoints_own(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a checkpoint whose processor allows far larger images than the run does (as released Qwen ones do)
    build_processor(str(tmp_path), 28 * 28, 1280 * 28 * 28, corpus=["How many?"] * 3, vocab_size=200)
    big = random_image(np.random.default_rng(0), low=600, high=700)
    own = load_processor(str(tmp_path)).image_processor(images=[big])["image_grid_thw"][0]
    bounded = load_processor(str(tmp_path), 28 * 28, 64 * 28 * 28).image_processor(images=[big])
    t, h, w = (int(x) for x in bounded["image_grid_thw"][0])
    assert h * w * 14 * 14 <= 64 * 28 * 28 < int(own[1] * own[2]) * 14 * 14
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        load_processor(str(tmp_path), 64 * 28 * 28, 28 * 28)


def test_missing_processor_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_processor"):
        load_processor(str(tmp_path / "nope"))


def test_too_small_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer([], vocab_size=50)
