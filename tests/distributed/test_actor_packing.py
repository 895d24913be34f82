"""Packed sequences and token-budget micro-batches in the actor: at TP2 + sequence parallelism and at PP2,
with images, log-probs equal transformers' and one GRPO step (loss, grad norm, updated weights) equals the
unsplit, unpacked step done with transformers + torch AdamW, for every loss aggregation mode. The 4-rank
(data-parallel) packed layouts run in test_actor."""

from __future__ import annotations

import dataclasses

import pytest

from mmr1_mega.algo.config import LOSS_AGG_MODES
from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.tiny import save_tiny_model
from tests.distributed import actor_workers
from tests.distributed.actor_reference import grpo_batch, merge_ranks, reference_step
from tests.distributed.test_actor import LOSS, OPTIM, TEMPERATURE
from tests.tolerances import adam_first_step_tolerance, assert_within

pytestmark = pytest.mark.distributed

LAYOUTS = ["tp2-sp-packed", "pp2-packed"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("actor-packing-hf")
    hf = save_tiny_model(d, seed=5, model_type="qwen2_5_vl")
    losses = {mode: dataclasses.replace(LOSS, loss_agg_mode=mode) for mode in LOSS_AGG_MODES}
    batch, logp0, logp_atol = grpo_batch(hf, LOSS, TEMPERATURE, seed=1)
    # the budgets split every replica's rows: the test would not show anything with one micro-batch
    for name in LAYOUTS:
        budget = actor_workers.LAYOUTS[name][5]
        assert max(batch.lengths) <= budget < sum(batch.lengths), (name, batch.lengths)
    refs = {mode: reference_step(hf, batch, cfg, OPTIM, TEMPERATURE) for mode, cfg in losses.items()}
    per_rank = run_on_ranks(
        actor_workers.actor_step_per_loss, 2, str(d), batch, losses, OPTIM, LAYOUTS, TEMPERATURE
    )
    results = {mode: merge_ranks([r[mode] for r in per_rank], LAYOUTS, logp0.shape) for mode in losses}
    return dict(batch=batch, logp0=logp0, logp_atol=logp_atol, refs=refs, results=results)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_packed_logprobs_equal_transformers(run, layout):
    mask = run["batch"].attention_mask.bool()
    for mode, result in run["results"].items():
        diff = (result[layout]["logp"] - run["logp0"])[mask].abs().max()
        assert diff <= run["logp_atol"], (mode, diff, run["logp_atol"])


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_packed_budget_step_equals_the_unsplit_step(run, layout, mode):
    ref, got = run["refs"][mode], run["results"][mode][layout]
    m = got["metrics"]
    assert m["micro_batches"] >= 2  # the batch was split
    assert m["padding_fraction"] < 0.2  # packed: padding only up to the TP multiple
    # as in test_actor: sums of many well-scaled terms, equal to the forward bound's order between layouts
    assert m["loss"] == pytest.approx(ref["loss"], rel=1e-4, abs=1e-6)
    assert m["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    for name, w in ref["ref_weights"].items():
        tol = adam_first_step_tolerance(
            ref["start_weights"][name], w, ref["clipped_grads"][name], OPTIM["lr"], OPTIM["adam_eps"]
        )
        assert_within(got["weights"][name], w, tol, f"{layout} {mode} {name}")
