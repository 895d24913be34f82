"""Weight sync from a TP=2 and a PP=2 megatron actor (gloo, 4 ranks) into each real engine, before and after a
real optimizer step: the engine's greedy continuations and log-probs then equal transformers on the HF export
of the same actor (text and image prompts; the second sync also proves the engine's caches were reset: the
same prompts were served on the old weights)."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.distributed.launch import run_on_ranks
from tests.engines import engine_workers
from tests.engines.conftest import save_engine_model
from tests.engines.test_engines import (
    _hf,
    _processor,
    _prompts,
    _request,
    assert_greedy_equal,
    assert_logprobs_equal,
)

pytestmark = [pytest.mark.engine, pytest.mark.distributed]
LAYOUTS = ["tp2", "pp2"]
NEW_TOKENS = 8


def _train_batch(prompts: list[dict], image_token_id: int) -> dict:
    """The prompts as one right-padded training batch (what the actor's step learns from)."""
    n = max(len(p["ids"]) for p in prompts)
    ids = torch.zeros(len(prompts), n, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, : len(p["ids"])] = torch.tensor(p["ids"])
        mask[i, : len(p["ids"])] = 1
    with_images = [p for p in prompts if p["images"]]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == image_token_id).long(),
        "pixel_values": torch.cat([p["pixel_values"] for p in with_images]),
        "image_grid_thw": torch.cat([p["image_grid_thw"] for p in with_images]),
    }


@pytest.fixture(scope="module")
def synced(served, tmp_path_factory):
    kind, engine, server_dir = served
    return sync_and_serve(kind, engine, server_dir, tmp_path_factory.mktemp(f"sync-{kind}"))


def sync_and_serve(kind, engine, server_dir, root, family: str = "qwen2_5_vl") -> dict:
    """Sync a TP2 and a PP2 actor (before and after an optimizer step) into the running engine; the engine's
    greedy answers (tokens, log-probs) to text and image prompts per layout and version, rank 0's metrics."""
    actor = root / "actor"
    actor.mkdir()
    save_engine_model(actor, seed=1, family=family)  # the server model's shapes and tokenizer, other weights
    prompts = _prompts(_processor(actor))
    hf = _hf(actor)
    requests = [_request(p, temperature=0.0, max_new_tokens=NEW_TOKENS) for p in prompts]
    engine.generate(requests)  # the server has now seen these prompts and this image on its own weights
    (rank0, *_) = run_on_ranks(
        engine_workers.sync_into_real_engine,
        4,
        kind,
        str(server_dir),
        engine.servers[0].port,
        str(actor),
        str(root / "out"),
        _train_batch(prompts, hf.config.image_token_id),
        requests,
        LAYOUTS,
    )
    return {"root": root, "prompts": prompts, "rank0": rank0}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("version", ["v0", "v1"])
def test_engine_continuations_equal_transformers_on_the_actor_export(synced, layout, version):
    hf = _hf(synced["root"] / "out" / layout / version)
    for p, (tokens, logprobs) in zip(synced["prompts"], synced["rank0"][layout][version]):
        assert_greedy_equal(hf, p, tokens, NEW_TOKENS)
        assert_logprobs_equal(hf, p, tokens, logprobs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_optimizer_step_changed_what_the_engine_serves(synced, layout):
    v0, v1 = synced["rank0"][layout]["v0"], synced["rank0"][layout]["v1"]
    assert [lp for _, lp in v0] != [lp for _, lp in v1]
    m = synced["rank0"][layout]["sync_v1"]
    assert m["tensors"] > 0 and m["bytes"] > 0
