"""HF <-> megatron conversion: bitwise round trips, resharding between layouts, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models import convert
from mmr1_mega.models.tiny import save_tiny_model, tiny_vl_batch
from tests.distributed import model_workers
from tests.tolerances import fp32_forward_bound

pytestmark = pytest.mark.distributed


def _tensors(directory):
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def source(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf-src")
    save_tiny_model(d, seed=5, model_type=request.param, tie_word_embeddings=False)
    (d / "tokenizer_config.json").write_text(json.dumps({"note": "copied with the weights"}))
    return d


@pytest.fixture(scope="module")
def dist_ckpt(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("mcore") / "ckpt"
    assert (
        convert.main(["hf-to-mcore", "--hf-dir", str(source), "--out", str(out), "--tp", "2", "--pp", "2"])
        == 0
    )
    return out


def test_hf_to_megatron_tp2pp2_to_hf_is_bitwise_equal(source, tmp_path):
    out = tmp_path / "export"
    run_on_ranks(model_workers.load_and_export, 4, str(source), str(out), 2, 2, 4096)
    ref, got = _tensors(source), _tensors(out)
    assert set(got) == set(ref)
    for name in ref:
        assert torch.equal(got[name], ref[name]), name
    assert (out / "tokenizer_config.json").is_file() and (out / "config.json").is_file()


def test_export_is_sharded_with_an_index_when_over_the_shard_size(source, tmp_path):
    out = tmp_path / "sharded"
    run_on_ranks(model_workers.load_and_export, 2, str(source), str(out), 1, 2, 0.05)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2 and all((out / f).is_file() for f in files)
    assert set(index["weight_map"]) == set(_tensors(source))


def test_checkpoint_saved_at_tp2pp2_converts_to_hf_bitwise(source, dist_ckpt, tmp_path):
    out = tmp_path / "hf"
    assert convert.main(["mcore-to-hf", "--ckpt", str(dist_ckpt), "--out", str(out)]) == 0
    ref, got = _tensors(source), _tensors(out)
    assert set(got) == set(ref) and all(torch.equal(got[n], ref[n]) for n in ref)


def test_checkpoint_saved_at_tp2pp2_loads_at_tp1_with_equal_logits(source, dist_ckpt):
    from transformers import AutoModelForImageTextToText

    hf = AutoModelForImageTextToText.from_pretrained(source).eval()
    batch = tiny_vl_batch(hf.config, seed=2)
    with torch.no_grad():
        ref = hf(**batch).logits
    [logits] = run_on_ranks(model_workers.load_ckpt_logits, 1, str(dist_ckpt), batch)
    mask = batch["attention_mask"].bool()
    bound = fp32_forward_bound(hf.config.text_config, batch["input_ids"].shape[1])
    assert (logits[mask] - ref[mask]).abs().max() <= bound * ref[mask].abs().max()


def test_exported_directory_loads_with_transformers_and_generates(source, dist_ckpt, tmp_path):
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "hf-bf16"
    assert convert.main(["mcore-to-hf", "--ckpt", str(dist_ckpt), "--out", str(out), "--dtype", "bf16"]) == 0
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert next(model.parameters()).dtype == torch.bfloat16
    batch = tiny_vl_batch(model.config, seed=4)
    batch = {
        k: v[2:3] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
        for k, v in batch.items()
    }
    batch["pixel_values"] = batch["pixel_values"][-24:]  # the third sample's image (grid 1x6x4)
    batch["image_grid_thw"] = batch["image_grid_thw"][2:3]
    n = int(batch["attention_mask"].sum())
    batch = {k: (v[:, :n] if v.dim() == 2 and k != "pixel_values" else v) for k, v in batch.items()}
    gen = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, n + 5)


def test_unknown_model_type_is_a_clear_error(tmp_path, capsys):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert convert.main(["hf-to-mcore", "--hf-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "model_type 'llama' is not supported" in capsys.readouterr().err


def test_corrupt_weight_file_is_a_clear_error(source, tmp_path, capsys):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(source, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    assert convert.main(["hf-to-mcore", "--hf-dir", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "is not a readable safetensors file" in capsys.readouterr().err


def test_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert (
        convert.main(["hf-to-mcore", "--hf-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert convert.main(["mcore-to-hf", "--ckpt", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a megatron distributed checkpoint" in capsys.readouterr().err


def test_layout_that_does_not_divide_the_model_is_refused_before_launch(source, tmp_path, capsys):
    assert (
        convert.main(["hf-to-mcore", "--hf-dir", str(source), "--out", str(tmp_path / "o"), "--tp", "3"]) == 2
    )
    assert "attention heads (4) % tensor_parallel (3)" in capsys.readouterr().err


def test_weights_that_do_not_match_the_config_are_a_clear_error(source, tmp_path, capsys):
    bad = tmp_path / "bad"
    cfg = json.loads((source / "config.json").read_text())
    save_tiny_model(bad, seed=1, model_type=cfg["model_type"], intermediate_size=96)
    (bad / "config.json").write_text(json.dumps(cfg))  # config says intermediate 128, weights have 96
    assert convert.main(["hf-to-mcore", "--hf-dir", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "mlp.linear_fc1.weight: checkpoint gives shape" in err and "does config.json match" in err
