"""Megatron Qwen2.5-VL equals transformers at the released 3B and 7B widths (hidden, heads, GQA, head_dim
128, mrope_section [16, 24, 24], vocab 151,936 / 152,064, the real special-token ids, the vision tower at
width 1280 with window and full attention), cut to 2 decoder layers and 4 vision blocks: forward logits at
TP1, TP2 and TP2+SP, with each rank's memory while loading and running (docs/benchmarks.md)."""

from __future__ import annotations

import gc
import json
import os
import shutil

import pytest
import torch

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.presets import qwen2_5_vl_config
from mmr1_mega.models.qwen_vl.bridge import check_layout
from tests.distributed import model_workers
from tests.tolerances import fp32_forward_bound

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

GRID = (1, 24, 32)  # a 336 x 448 image: 12 windows of 112 px (8 x 8 patches) and 768 patches in all


def _batch(cfg, seed: int) -> dict:
    """One sample: text, a 336 x 448 image, text (216 tokens)."""
    g = torch.Generator().manual_seed(seed)
    v = cfg.vision_config
    t, h, w = GRID
    n_image = t * h * w // v.spatial_merge_size**2

    def text(n):  # ordinary vocabulary, below the special tokens
        return torch.randint(1000, 150000, (n,), generator=g).tolist()

    ids = text(10) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_image
    ids += [cfg.vision_end_token_id] + text(12)
    input_ids = torch.tensor([ids])
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == cfg.image_token_id).long(),
        "pixel_values": torch.randn(t * h * w, patch_dim, generator=g),
        "image_grid_thw": torch.tensor([GRID]),
    }


def _save_real_width_model(cfg, out_dir, seed: int):
    """A random transformers model of this config, saved to out_dir and returned."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    hf = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    need = sum(p.numel() * p.element_size() for p in hf.parameters()) + (1 << 30)  # checkpoint + 1 GiB slack
    free = shutil.disk_usage(out_dir).free
    if free < need:  # say so before writing, not as a serialisation error half-way through the file
        raise RuntimeError(
            f"{out_dir}: {free / 2**30:.1f} GiB free, the checkpoint needs {need / 2**30:.1f} GiB"
        )
    with torch.no_grad():  # transformers zero-initialises biases and sets norms to 1: make them random
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(out_dir)
    return hf


@pytest.fixture(scope="module", params=["3b", "7b"])
def run(request, tmp_path_factory):
    size = request.param
    cfg = qwen2_5_vl_config(size, num_layers=2, vision_depth=4)
    d = tmp_path_factory.mktemp(f"qwen2_5_vl_{size}")
    hf = _save_real_width_model(cfg, d, seed=5)
    batch = _batch(cfg, seed=6)
    with torch.no_grad():
        ref = hf(**batch).logits
    del hf
    gc.collect()  # the ranks are forked from this process: do not hand them the reference model
    results = {}
    for world, layouts in ((1, ["tp1"]), (2, ["tp2", "tp2sp"])):
        for rank_out in run_on_ranks(model_workers.real_width_forward, world, str(d), batch, ref, layouts):
            for name, out in rank_out.items():
                results.setdefault(name, []).append(out)
    report = {layout: [{"rank": o["rank"], **o["memory"]} for o in outs] for layout, outs in results.items()}
    print(f"\nQwen2.5-VL-{size} widths, 2 layers, 4 vision blocks, {batch['input_ids'].shape[1]} tokens:")
    print(json.dumps(report, indent=1))
    if os.environ.get("MMR1_REAL_WIDTH_REPORT"):
        with open(os.environ["MMR1_REAL_WIDTH_REPORT"] + f".{size}.json", "w") as f:
            json.dump({"size": size, "tokens": batch["input_ids"].shape[1], "memory": report}, f, indent=1)
    yield {"cfg": cfg, "batch": batch, "results": results}
    shutil.rmtree(d, ignore_errors=True)  # GBs per size: gone before the next size (or job) writes its own


@pytest.mark.parametrize("layout", ["tp1", "tp2", "tp2sp"])
def test_logits_equal_transformers_at_real_width(run, layout):
    bound = fp32_forward_bound(run["cfg"].text_config, run["batch"]["input_ids"].shape[1])
    for out in run["results"][layout]:
        assert out["diff"] <= bound * out["scale"], (layout, out["rank"], out["diff"], bound * out["scale"])


def test_every_rank_reports_its_memory_while_loading_and_running(run):
    for layout, outs in run["results"].items():
        assert len(outs) == (1 if layout == "tp1" else 2)
        for out in outs:
            assert set(out["memory"]) == {"load", "forward"}
            assert out["memory"]["load"]["peak_gb"] >= out["memory"]["load"]["end_gb"] > 0


def test_tp2_halves_what_a_rank_holds(run):
    # the language model is split over TP (the vision tower is replicated): each TP2 rank holds well under
    # the TP1 rank's resident weights
    tp1 = run["results"]["tp1"][0]["memory"]["load"]["end_over_start_gb"]
    for out in run["results"]["tp2"]:
        assert out["memory"]["load"]["end_over_start_gb"] < 0.75 * tp1


def test_a_layout_the_real_model_cannot_take_fails_before_launch_naming_the_limit():
    with pytest.raises(ValueError, match=r"kv heads \(2\) % tensor_parallel \(4\)"):
        check_layout(qwen2_5_vl_config("3b"), 4, 1, False)
    with pytest.raises(ValueError, match=r"attention heads \(28\) % tensor_parallel \(8\)"):
        check_layout(qwen2_5_vl_config("7b"), 8, 1, False)
