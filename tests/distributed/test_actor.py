"""The megatron actor: log-probs equal transformers', and one GRPO step equals the same step done with
transformers + torch AdamW, in every layout (TP, PP, SP, DP with and without the distributed optimizer)."""

from __future__ import annotations

import pytest

from mmr1_mega.algo.config import GRPOLossConfig
from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.tiny import save_tiny_model
from tests.distributed import actor_workers
from tests.distributed.actor_reference import grpo_batch, merge_ranks, reference_step
from tests.tolerances import adam_first_step_tolerance, assert_within

pytestmark = pytest.mark.distributed

# the 4-rank layouts (data parallel among them); test_actor_packing runs the 2-rank packed ones per loss mode
LAYOUTS = [name for name in actor_workers.LAYOUTS if name not in ("tp2-sp-packed", "pp2-packed")]
TEMPERATURE = 0.7
OPTIM = dict(lr=1e-3, weight_decay=0.0, clip_grad=0.05, adam_eps=1e-8)
LOSS = GRPOLossConfig(
    clip_low=0.2, clip_high=0.28, kl_coef=0.1, kl_estimator="low_var_kl", loss_agg_mode="token-mean"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("actor-hf")
    hf = save_tiny_model(d, seed=9, model_type="qwen2_5_vl")
    batch, logp0, logp_atol = grpo_batch(hf, LOSS, TEMPERATURE)
    ref = reference_step(hf, batch, LOSS, OPTIM, TEMPERATURE)
    rank_results = run_on_ranks(actor_workers.actor_step, 4, str(d), batch, LOSS, OPTIM, LAYOUTS, TEMPERATURE)
    return ref | dict(
        batch=batch,
        logp0=logp0,
        logp_atol=logp_atol,
        results=merge_ranks(rank_results, LAYOUTS, logp0.shape),
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logprobs_equal_transformers(run, layout):
    mask = run["batch"].attention_mask.bool()
    diff = (run["results"][layout]["logp"] - run["logp0"])[mask].abs().max()
    assert diff <= run["logp_atol"], (diff, run["logp_atol"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_step_loss_and_grad_norm_equal_reference(run, layout):
    # the loss and the grad norm are sums of many well-scaled terms (no cancellation to speak of): they
    # agree to the forward bound's order (~1e-4 relative at these sizes) between layouts
    m = run["results"][layout]["metrics"]
    assert m["loss"] == pytest.approx(run["loss"], rel=1e-4, abs=1e-6)
    assert m["grad_norm"] == pytest.approx(run["grad_norm"], rel=1e-4)
    assert m["update_skipped"] == 0.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_updated_weights_equal_torch_adamw(run, layout):
    # Adam's first step is lr * g / (|g| + eps): elements whose gradient is near eps are ill-conditioned
    # (a rounding-level change of g moves them by a large share of lr), so each element is held to the
    # spread of that map over the gradients the other computation may have produced (tests/tolerances.py)
    got, ref = run["results"][layout]["weights"], run["ref_weights"]
    assert set(got) == set(ref)
    for name in ref:
        tol = adam_first_step_tolerance(
            run["start_weights"][name], ref[name], run["clipped_grads"][name], OPTIM["lr"], OPTIM["adam_eps"]
        )
        assert_within(got[name], ref[name], tol, f"{layout} {name}")


def test_the_adam_tolerance_is_tight_where_the_step_is_well_conditioned(run):
    # the bound must not hide a wrong update: where |g| >> eps the step is lr * sign(g) to within rounding,
    # so a step 1 % too large (a wrong lr, bias correction or clip) falls outside it
    grads, w0, w1 = run["clipped_grads"], run["start_weights"], run["ref_weights"]
    for name in w1:
        g = grads[name]
        well = g.abs() > 1e4 * OPTIM["adam_eps"]
        if not well.any():
            continue
        tol = adam_first_step_tolerance(w0[name], w1[name], g, OPTIM["lr"], OPTIM["adam_eps"])
        wrong = w0[name] + 1.01 * (w1[name] - w0[name])
        assert ((wrong - w1[name]).abs().double() > tol)[well].all(), name
