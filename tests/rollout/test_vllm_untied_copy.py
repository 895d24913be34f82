"""rollout/vllm.py `untied_copy`: the folder vLLM's CPU build serves for a model with tied embeddings (the
real-server behaviour is tests/engines/test_vllm_tied_embeddings.py)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from mmr1_mega.models.hf_io import HFCheckpoint
from mmr1_mega.models.tiny import save_tiny_model
from mmr1_mega.rollout.vllm import untied_copy


def test_a_tied_model_gets_an_untied_copy_with_lm_head_equal_to_the_embedding(tmp_path):
    src = tmp_path / "tied"
    save_tiny_model(src, tie_word_embeddings=True)
    dst = untied_copy(src, parent=str(tmp_path))
    assert dst is not None and dst.parent == tmp_path
    assert json.loads((dst / "config.json").read_text())["tie_word_embeddings"] is False
    assert (
        json.loads((src / "config.json").read_text())["tie_word_embeddings"] is True
    )  # the source untouched
    ckpt = HFCheckpoint(dst)
    embed = next(n for n in ckpt.names() if n.endswith("embed_tokens.weight"))
    assert torch.equal(ckpt.read("lm_head.weight"), ckpt.read(embed))
    assert (dst / "model.safetensors").is_symlink()  # the weights are linked, not copied
    assert set(ckpt.names()) == set(load_file(src / "model.safetensors")) | {"lm_head.weight"}


def test_a_sharded_tied_model_gets_lm_head_in_its_index_and_an_untied_one_no_copy(tmp_path):
    src = tmp_path / "sharded"
    model = save_tiny_model(src, tie_word_embeddings=True)
    (src / "model.safetensors").unlink()
    model.save_pretrained(src, max_shard_size="20KB")  # several shards and an index
    assert (src / "model.safetensors.index.json").is_file()
    dst = untied_copy(src, parent=str(tmp_path))
    index = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["lm_head.weight"] == "lm_head.safetensors"
    assert "lm_head.weight" in HFCheckpoint(dst).names()
    untied = tmp_path / "untied"
    save_tiny_model(untied, tie_word_embeddings=False)
    assert untied_copy(untied, parent=str(tmp_path)) is None
