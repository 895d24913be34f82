"""Weight sync from TP=2, PP=2 and TP=2 x PP=2 megatron actors (gloo, 4 ranks) into the local engine.

One launch runs every layout (see sync_workers.sync_into_local_engine); each test checks one behaviour
of its results against an independent reference: the HF export of the same actor, loaded by transformers.
The FP8 case syncs into the local engine's FP8 stand-in (modelopt format): its reference is the export as
an FP8 engine holds it (each decoder linear quantized by modelopt and dequantized, the rest unchanged).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.hf_io import canonical_name
from mmr1_mega.models.tiny import save_tiny_model, tiny_vl_batch
from mmr1_mega.rollout.protocol import GenerationRequest
from tests.distributed import sync_workers

pytestmark = pytest.mark.distributed
LAYOUTS = ["tp2", "pp2", "tp2pp2"]


def _tensors(directory):
    """An exported directory's tensors by on-disk (canonical) name: the names the engine's state uses."""
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update({canonical_name(k): v for k, v in load_file(f).items()})
    return out


def _payload(run, directory) -> dict:
    """What the sync sends for an exported directory: its tensors, or their FP8 stream."""
    tensors = _tensors(directory)
    return tensors if run["fp8"] is None else dict(run["fp8"].quantize(tensors.items()))


def _served(run, directory) -> dict:
    """The weights an engine computes with after a sync of the exported directory: for an FP8 engine, each
    decoder linear dequantized from its FP8 payload."""
    from mmr1_mega.quant import fp8

    tensors, payload = _tensors(directory), _payload(run, directory)
    if run["fp8"] is None:
        return tensors
    fmt = run["fp8"].fmt
    return {
        n: fp8.dequantize(payload[n], payload[fp8.scale_names(fmt, n)[0]]) if fp8.quantized_weight(n) else t
        for n, t in tensors.items()
    }


def _requests(batch, hf_config) -> list[GenerationRequest]:
    """The batch's three prompts (text only, two images, one image) as greedy engine requests."""
    merge2 = hf_config.vision_config.spatial_merge_size**2
    reqs, patch, image = [], 0, 0
    for i in range(batch["input_ids"].shape[0]):
        ids = batch["input_ids"][i, : int(batch["attention_mask"][i].sum())]
        n_img = int((ids == hf_config.vision_start_token_id).sum())
        grid = batch["image_grid_thw"][image : image + n_img]
        n_patch = int(grid.prod(-1).sum())
        assert int((ids == hf_config.image_token_id).sum()) * merge2 == n_patch
        reqs.append(
            GenerationRequest(
                prompt_ids=ids.tolist(),
                pixel_values=batch["pixel_values"][patch : patch + n_patch] if n_img else None,
                image_grid_thw=grid if n_img else None,
                temperature=0.0,
                max_new_tokens=6,
            )
        )
        patch, image = patch + n_patch, image + n_img
    return reqs


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "qwen2_5_vl-fp8"])
def run(request, tmp_path_factory):
    family = request.param.removesuffix("-fp8")
    root = tmp_path_factory.mktemp("sync")
    actor, engine = root / "actor", root / "engine"
    hf = save_tiny_model(actor, seed=11, model_type=family)
    save_tiny_model(engine, seed=12, model_type=family)  # same shapes, other weights
    fp8_weights = None
    if request.param.endswith("-fp8"):
        from mmr1_mega.quant import fp8

        modules = [n[: -len(".weight")] for n in _tensors(actor) if fp8.quantized_weight(n)]
        # static activation scales pass through the sync unchanged: any values do
        fp8_weights = fp8.FP8Weights("modelopt", {m: 0.01 * (i + 1) for i, m in enumerate(modules)})
    batch = tiny_vl_batch(hf.config, seed=int(torch.randint(0, 10_000, ()).item()))
    requests = _requests(batch, hf.config)
    results = run_on_ranks(
        sync_workers.sync_into_local_engine,
        4,
        str(actor),
        str(engine),
        str(root / "out"),
        batch,
        requests,
        LAYOUTS,
        fp8_weights,
    )
    return {
        "root": root,
        "rank0": results[0],
        "all": results,
        "requests": requests,
        "engine_dir": engine,
        "fp8": fp8_weights,
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_engine_state_equals_the_hf_export_bitwise_after_sync(run, layout):
    got, ref = run["rank0"][layout]["state0"], _served(run, run["root"] / "out" / layout / "v0")
    assert set(got) == set(ref)
    for name in ref:
        assert torch.equal(got[name], ref[name]), name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_engine_tensor_was_overwritten_by_the_sync(run, layout):
    before, after = run["rank0"][layout]["engine_before"], run["rank0"][layout]["state0"]
    assert all(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_engine_greedy_generation_equals_transformers_on_the_export(run, layout):
    from transformers import AutoModelForImageTextToText

    for version in ("v0", "v1"):
        export = run["root"] / "out" / layout / version
        hf = AutoModelForImageTextToText.from_pretrained(export).eval()
        served = _served(run, export)
        with torch.no_grad():  # the FP8 engine's dequantized weights (the export's own otherwise)
            for n, p in hf.named_parameters():
                p.copy_(served[canonical_name(n)])
        for r, got in zip(run["requests"], run["rank0"][layout][f"greedy{version[1]}"]):
            ids = torch.tensor([r.prompt_ids])
            kw = dict(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                mm_token_type_ids=(ids == hf.config.image_token_id).long(),
            )
            if r.pixel_values is not None:
                kw.update(pixel_values=r.pixel_values, image_grid_thw=r.image_grid_thw)
            ref = hf.generate(**kw, max_new_tokens=r.max_new_tokens, do_sample=False)[
                0, ids.shape[1] :
            ].tolist()
            n = len(got)  # the engine stops at EOS; transformers pads after it
            assert got == ref[:n] and (n == r.max_new_tokens or got[-1] == hf.generation_config.eos_token_id)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_after_a_training_step_the_engine_equals_the_new_export(run, layout):
    out = run["rank0"][layout]
    v0, v1 = (
        _served(run, run["root"] / "out" / layout / "v0"),
        _served(run, run["root"] / "out" / layout / "v1"),
    )
    changed = {n for n in v1 if not torch.equal(v1[n], v0[n])}
    assert len(changed) >= 0.9 * len(v1)  # Adam moves (nearly) every tensor
    for name in v1:
        assert torch.equal(out["state1"][name], v1[name]), name
    assert {n for n in v1 if not torch.equal(out["state1"][n], out["state0"][n])} == changed


@pytest.mark.parametrize("layout", LAYOUTS)
def test_verify_mode_passes_after_sync_and_finds_a_corrupted_tensor(run, layout):
    out = run["rank0"][layout]
    assert out["metrics1"]["verify"] == {"mismatched": [], "missing_in_engine": [], "engine_only": []}
    assert out["corrupt_report"] == {
        "mismatched": [sync_workers.CORRUPTED],
        "missing_in_engine": [],
        "engine_only": [],
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_metrics_count_every_byte_and_split_buckets(run, layout):
    v1 = _payload(run, run["root"] / "out" / layout / "v1")  # what was sent: FP8 weights and scales
    m = run["rank0"][layout]["metrics1"]
    # one stage: its leader is rank 0 and loads directly; more: later stages relay through rank 0
    assert m["mode"] == ("relay" if run["rank0"][layout]["pp_size"] > 1 else "direct")
    assert m["tensors"] == len(v1)
    assert m["bytes"] == sum(t.numel() * t.element_size() for t in v1.values()) == sum(m["stage_bytes"])
    assert len(m["stage_bytes"]) == run["rank0"][layout]["pp_size"]
    big = sum(t.numel() * t.element_size() > 0.02 * 2**20 for t in v1.values())  # each travels alone
    assert big >= 2 and big + len(m["stage_bytes"]) <= m["buckets"] < m["tensors"]
    assert m["seconds"] > 0 and m["gb_per_s"] > 0
    # one engine client (rank 0's), given every byte: the relayed stages' too
    assert [(e["rank"], e["bytes"]) for e in m["engines"]] == [(0, m["bytes"])] and m["engines"][0][
        "seconds"
    ] > 0
    assert all(r[layout]["metrics1"] == m for r in run["all"])  # every rank returns the same metrics
