"""Batching: RL left padding, SFT right padding, mm_token_type_ids marking image tokens."""

import numpy as np
import torch

from mmr1_mega.data import IGNORE_INDEX, collate_rl, collate_sft, encode_conversation, encode_prompt
from mmr1_mega.data.sft_dataset import normalize_messages
from tests.data.conftest import random_image


def _rl_samples(processor, rng, n):
    out = []
    for i in range(n):
        images = [random_image(rng) for _ in range(int(rng.integers(0, 3)))]
        enc = encode_prompt(processor, "q" * int(rng.integers(1, 40)), images)
        out.append({**enc.__dict__, "index": i, "id": str(i), "problem": "q", "answer": str(i)})
    return out


def test_rl_batch_is_left_padded_and_keeps_image_order(processor):
    rng = np.random.default_rng()
    samples = _rl_samples(processor, rng, 4)
    pad = processor.tokenizer.pad_token_id
    batch = collate_rl(samples, pad)
    width = max(len(s["input_ids"]) for s in samples)
    assert batch["input_ids"].shape == (4, width)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        assert batch["input_ids"][i, width - n :].tolist() == s["input_ids"]
        assert (batch["input_ids"][i, : width - n] == pad).all()
        assert batch["attention_mask"][i].tolist() == [0] * (width - n) + [1] * n
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_id).long())
    assert torch.equal(batch["pixel_values"], torch.cat([s["pixel_values"] for s in samples]))
    assert batch["num_images"].tolist() == [len(s["image_grid_thw"]) for s in samples]
    assert batch["image_grid_thw"].shape == (int(batch["num_images"].sum()), 3)


def test_sft_batch_is_right_padded_with_ignored_labels(processor):
    rng = np.random.default_rng()
    samples = []
    for _ in range(3):
        msgs = [
            {"role": "user", "content": "<image>q"},
            {"role": "assistant", "content": "a" * int(rng.integers(1, 20))},
        ]
        samples.append(
            encode_conversation(processor, normalize_messages(msgs, "s"), [random_image(rng)]).__dict__
        )
    batch = collate_sft(samples, processor.tokenizer.pad_token_id)
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == s["input_ids"]
        assert batch["labels"][i, :n].tolist() == s["labels"]
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][i].sum() == n
        assert batch["mm_token_type_ids"][i, :n].tolist() == s["mm_token_type_ids"]
