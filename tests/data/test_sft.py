"""SFT encoding: the loss covers assistant tokens only, and ids equal the processor's on the full text."""

import json

import numpy as np
import pytest

from mmr1_mega.data import IGNORE_INDEX, DataError, SFTDataset, encode_conversation
from mmr1_mega.data.prompts import render_chat
from mmr1_mega.data.sft_dataset import normalize_messages
from tests.data.conftest import png_bytes, random_image


def _conversation(rng):
    replies = [
        f"<think>step {rng.integers(100)}</think><answer>\\boxed{{{rng.integers(10)}}}</answer>"
        for _ in range(2)
    ]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": replies[0]}]},
        {"role": "user", "content": "And here <image>?"},
        {"role": "assistant", "content": replies[1]},
    ]
    return messages, replies


def test_labels_cover_exactly_the_assistant_replies_and_end_of_turn(processor):
    rng = np.random.default_rng()
    messages, replies = _conversation(rng)
    images = [random_image(rng), random_image(rng)]
    enc = encode_conversation(processor, normalize_messages(messages, "sys"), images)
    assert len(enc.labels) == len(enc.input_ids)
    # Independent reference: decode each maximal run of labelled tokens.
    runs, current = [], []
    for tok, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE_INDEX:
            assert lab == tok
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    decoded = [processor.tokenizer.decode(r) for r in runs]
    assert decoded == [reply + "<|im_end|>" for reply in replies]


def test_conversation_ids_equal_processor_ids_on_the_rendered_text(processor):
    rng = np.random.default_rng()
    messages, _ = _conversation(rng)
    images = [random_image(rng), random_image(rng)]
    normalized = normalize_messages(messages, "sys")
    enc = encode_conversation(processor, normalized, images)
    text = render_chat(processor, normalized, add_generation_prompt=False)
    ref = processor(text=[text], images=images)
    assert enc.input_ids == list(ref["input_ids"][0])
    assert enc.mm_token_type_ids == list(ref["mm_token_type_ids"][0])


def test_system_prompt_is_added_only_when_missing():
    with_system = [
        {"role": "system", "content": "mine"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert normalize_messages(with_system, "default")[0]["content"][0]["text"] == "mine"
    assert normalize_messages(with_system[1:], "default")[0]["content"][0]["text"] == "default"


def test_sft_dataset_skips_and_counts_bad_conversations(tmp_path, cfg, processor):
    rng = np.random.default_rng()
    (tmp_path / "i.png").write_bytes(png_bytes(random_image(rng)))
    good = {
        "messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
        "images": ["i.png"],
    }
    rows = [
        good,
        {"messages": [{"role": "user", "content": "q"}]},  # no assistant turn
        {
            "messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
            "images": [],
        },
        {"messages": "not a list"},
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = SFTDataset([str(path)], cfg, processor)
    assert len(ds) == 1
    assert dict(ds.report.counts) == {"no assistant turn": 1, "image count mismatch": 1, "bad messages": 1}
    sample = ds[0]
    assert sample["pixel_values"].shape[0] == int(sample["image_grid_thw"].prod())


def test_sft_file_without_usable_rows_is_an_error(tmp_path, cfg, processor):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(DataError, match="no usable SFT record"):
        SFTDataset([str(path)], cfg, processor)
