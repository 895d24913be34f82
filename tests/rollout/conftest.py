"""Fixtures of the rollout tests: a tiny random Qwen2.5-VL with a word-level tokenizer."""

from __future__ import annotations

import pytest

from mmr1_mega.models.tiny import save_tiny_model

SPECIALS = ["<pad>", "<s>", "</s>", "<vs>", "<ve>", "<img>", "<vid>", "<unk>"]  # ids 0..7 as in tiny.py


def save_word_tokenizer(out_dir, vocab_size: int = 128) -> None:
    """A word-level fast tokenizer over "w8".."w{vocab-1}" (ids match the tiny model's vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)} | {f"w{i}": i for i in range(len(SPECIALS), vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[3:7],
    )
    fast.chat_template = (
        "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w9{% endif %}"
    )
    fast.save_pretrained(out_dir)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-vl")
    save_tiny_model(d, seed=3, model_type="qwen2_5_vl")
    save_word_tokenizer(d)
    return d
