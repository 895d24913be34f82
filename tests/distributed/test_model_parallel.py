"""Megatron Qwen-VL equals transformers' Qwen-VL in every parallel layout (logits, loss, gradients)."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.hf_io import canonical_name
from mmr1_mega.models.tiny import save_tiny_model, tiny_vl_batch
from tests.distributed import model_workers
from tests.tolerances import fp32_forward_bound

pytestmark = pytest.mark.distributed

LAYOUTS = list(model_workers.LAYOUTS)
VIDEOS = ((3, 4, 4), (2, 6, 4))
CASES = {
    "qwen2_5_vl-untied": dict(model_type="qwen2_5_vl", tie_word_embeddings=False),
    "qwen2_vl-tied": dict(model_type="qwen2_vl", tie_word_embeddings=True),
    "qwen3_vl-untied": dict(model_type="qwen3_vl", tie_word_embeddings=False),
    # full activation recomputation re-runs each layer in backward: the DeepStack features must come along
    "qwen3_vl-recompute": dict(model_type="qwen3_vl", tie_word_embeddings=False, recompute=True),
}


def _merge(rank_results):
    merged = {name: {"grads": {}} for name in LAYOUTS}
    for res in rank_results:
        for name, out in res.items():
            merged[name]["grads"].update({canonical_name(k): v for k, v in out.pop("grads", {}).items()})
            merged[name].update(out)
    return merged


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    hf_dir = tmp_path_factory.mktemp(request.param)
    kwargs = dict(CASES[request.param])
    recompute = kwargs.pop("recompute", False)
    hf = save_tiny_model(hf_dir, seed=7, **kwargs)
    # text-only, one-image, two-image and two video samples (Qwen3-VL: per-frame runs after timestamp text;
    # Qwen2.5-VL: second_per_grid_ts 0.5 spaces the temporal positions)
    batch = tiny_vl_batch(hf.config, seed=11, video_grids=VIDEOS, seconds_per_grid=0.5)
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, hf.config.text_config.vocab_size, batch["input_ids"].shape, generator=g)
    # reference: transformers, fp32
    out = hf(**batch)
    per_token = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), labels, reduction="none")
    mask = batch["attention_mask"].float()
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()
    loss = loss.detach()
    ref_grads = {canonical_name(n): p.grad.detach().clone() for n, p in hf.named_parameters()}
    results = _merge(
        run_on_ranks(model_workers.logits_and_grads, 4, str(hf_dir), batch, labels, LAYOUTS, recompute)
    )
    return dict(
        batch=batch,
        ref_logits=out.logits.detach(),
        ref_loss=loss.item(),
        ref_grads=ref_grads,
        tied=kwargs["tie_word_embeddings"],
        bound=fp32_forward_bound(hf.config.text_config, batch["input_ids"].shape[1]),
        text_config=hf.config.text_config,
        seq_len=batch["input_ids"].shape[1],
        tokens=int(batch["input_ids"].numel()),
        results=results,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_equal_transformers(case, layout):
    mask = case["batch"]["attention_mask"].bool()
    ours, ref = case["results"][layout]["logits"][mask], case["ref_logits"][mask]
    diff, atol = (ours - ref).abs().max().item(), case["bound"] * ref.abs().max().item()
    assert diff <= atol, f"{layout}: max |logits - HF| = {diff:.3g} > {atol:.3g}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loss_equals_transformers(case, layout):
    # a mean of per-token cross-entropies: each is within the forward bound of its logits' scale
    atol = case["bound"] * case["ref_logits"].abs().max().item()
    assert abs(case["results"][layout]["loss"] - case["ref_loss"]) <= atol


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_equal_transformers(case, layout):
    grads = case["results"][layout]["grads"]
    ref = case["ref_grads"]
    expected = set(ref)
    if case["tied"]:
        expected.discard("lm_head.weight")
    assert set(grads) == expected
    kinds = [
        "visual.patch_embed",
        "visual.blocks.0.attn.qkv",
        "visual.merger",
        "embed_tokens",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "layernorm",
        "model.norm",
    ]
    for kind in kinds:
        assert any(kind in n for n in grads), f"no gradient of kind {kind}"
    # backward runs the forward chain again and sums each weight gradient over the batch's tokens
    bound = fp32_forward_bound(case["text_config"], case["seq_len"], extra_terms=case["tokens"])
    for name, g in grads.items():
        torch.testing.assert_close(
            g,
            ref[name],
            atol=bound * ref[name].abs().max().item(),
            rtol=0,
            msg=lambda m, name=name: f"{layout} {name}: {m}",
        )
