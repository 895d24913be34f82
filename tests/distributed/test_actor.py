"""The megatron actor: log-probs equal transformers', and one GRPO step equals the same step done with
transformers + torch AdamW, in every layout (TP, PP, SP, DP with and without the distributed optimizer)."""

from __future__ import annotations

import pytest
import torch

from mmr1_mega.actor.batch import build_batch
from mmr1_mega.algo import compute_advantages
from mmr1_mega.algo.config import GRPOLossConfig
from mmr1_mega.distributed.launch import run_on_ranks
from mmr1_mega.models.hf_io import canonical_name
from mmr1_mega.models.tiny import save_tiny_model
from mmr1_mega.ops.grpo import grpo_loss
from tests.distributed import actor_workers
from tests.tolerances import adam_first_step_tolerance, assert_within, fp32_forward_bound

pytestmark = pytest.mark.distributed

LAYOUTS = list(actor_workers.LAYOUTS)
TEMPERATURE = 0.7
OPTIM = dict(lr=1e-3, weight_decay=0.0, clip_grad=0.05, adam_eps=1e-8)
LOSS = GRPOLossConfig(
    clip_low=0.2, clip_high=0.28, kl_coef=0.1, kl_estimator="low_var_kl", loss_agg_mode="token-mean"
)


def _hf_logits(hf, batch):
    return hf(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        mm_token_type_ids=(batch.input_ids == hf.config.image_token_id).long(),
        pixel_values=batch.pixel_values,
        image_grid_thw=batch.image_grid_thw,
    ).logits


def _hf_logp(hf, batch):
    logp = torch.log_softmax(_hf_logits(hf, batch)[:, :-1].float() / TEMPERATURE, -1)
    tok = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(tok, (1, 0))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("actor-hf")
    hf = save_tiny_model(d, seed=9, model_type="qwen2_5_vl")
    cfg = hf.config
    g = torch.Generator().manual_seed(0)
    image = [cfg.vision_start_token_id] + [cfg.image_token_id] * 4 + [cfg.vision_end_token_id]
    prompts, pixels, grids = [], [], []
    for i in range(4):  # 4 prompts x 2 responses; prompts 1 and 3 carry an image (grid 1x4x4)
        text = torch.randint(8, 128, (5 + i,), generator=g).tolist()
        with_image = i % 2 == 1
        for _ in range(2):
            prompts.append(text[:2] + image + text[2:] if with_image else text)
            pixels.append(torch.randn(16, 1176, generator=g) if with_image else None)
            grids.append(torch.tensor([[1, 4, 4]]) if with_image else None)
    responses = [
        torch.randint(8, 128, (int(n),), generator=g).tolist() for n in torch.randint(2, 9, (8,), generator=g)
    ]
    batch = build_batch(
        prompts, responses, pixels, grids, cfg.image_token_id, cfg.vision_config.spatial_merge_size
    )
    batch.rewards = torch.rand(8, generator=g)
    batch.group_ids = torch.arange(8) // 2
    batch.advantages = compute_advantages(batch.rewards, batch.group_ids, LOSS)
    with torch.no_grad():
        logp0 = _hf_logp(hf, batch)
        # log p = z_t / T - logsumexp(z / T): off by at most twice the logits' rounding bound, over T
        logp_atol = 2 * fp32_forward_bound(cfg.text_config, batch.seq_len) * _hf_logits(hf, batch).abs().max()
        logp_atol = logp_atol.item() / TEMPERATURE
    mask = batch.response_mask.bool()
    batch.old_logp = torch.where(mask, logp0 + 0.3 * torch.randn(logp0.shape, generator=g), 0.0)
    batch.ref_logp = torch.where(mask, logp0 + 0.2 * torch.randn(logp0.shape, generator=g), 0.0)

    # reference step: transformers model + the loss + torch AdamW with global-norm clipping
    logp = _hf_logp(hf, batch)
    loss, ref_metrics = grpo_loss(
        logp,
        batch.old_logp,
        batch.ref_logp,
        batch.response_mask,
        None,
        None,
        LOSS,
        advantages=batch.advantages,
    )
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in hf.parameters())).item()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), OPTIM["clip_grad"])
    start_weights = {canonical_name(n): p.detach().clone() for n, p in hf.named_parameters()}
    clipped_grads = {canonical_name(n): p.grad.detach().clone() for n, p in hf.named_parameters()}
    opt = torch.optim.AdamW(hf.parameters(), lr=OPTIM["lr"], weight_decay=0.0, eps=OPTIM["adam_eps"])
    opt.step()
    ref_weights = {canonical_name(n): p.detach().clone() for n, p in hf.named_parameters()}

    rank_results = run_on_ranks(actor_workers.actor_step, 4, str(d), batch, LOSS, OPTIM, LAYOUTS, TEMPERATURE)
    merged = {}
    for name in LAYOUTS:
        logp_full = torch.zeros_like(logp0)
        weights, metrics = {}, None
        for r in rank_results:
            out = r[name]
            metrics = out["metrics"]
            if "logp" in out:
                idx, lp = out["logp"]
                logp_full[idx, : lp.shape[1]] = lp
            weights.update(out.get("weights", {}))
        merged[name] = dict(logp=logp_full, weights=weights, metrics=metrics)
    return dict(
        batch=batch,
        logp0=logp0,
        logp_atol=logp_atol,
        loss=loss.item(),
        grad_norm=grad_norm,
        ref_metrics=ref_metrics,
        ref_weights=ref_weights,
        start_weights=start_weights,
        clipped_grads=clipped_grads,
        results=merged,
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
