"""The eager reference GRPO loss (mmr1_mega.algo.loss) against an independent fp64 autograd computation."""

import pytest
import torch

from mmr1_mega.algo import GRPOLossConfig, compute_advantages, grpo_loss_reference
from tests.algo.algo_fp64_reference import fp64_grpo, make_batch

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
ESTIMATORS = ["k1", "abs", "mse", "low_var_kl"]


def _seed() -> int:
    return int(torch.randint(0, 10**6, ()))


def _check(cfg, batch, advantages=None, normaliser=None, ref=True, behaviour=None):
    logp, old, ref_logp, mask, rewards, group_ids = batch
    ref_logp = ref_logp if ref else None
    x = logp.clone().requires_grad_()
    loss, metrics = grpo_loss_reference(
        x, old, ref_logp, mask, rewards, group_ids, cfg, advantages, normaliser, behaviour
    )
    (grad,) = torch.autograd.grad(loss, x)
    if advantages is None and rewards is not None:
        # the fp64 side takes the advantages the fp32 code computed: rewards -> advantages is held to its
        # derived rounding bound in test_algo_advantages, and a group with a tiny std turns that rounding
        # (u |r| / std) into loss differences no fixed tolerance here would cover
        advantages = compute_advantages(rewards, group_ids, cfg)
    want_loss, want_grad, want_metrics = fp64_grpo(
        logp,
        old,
        ref_logp,
        mask,
        rewards,
        group_ids,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        dual_c=cfg.dual_clip_c,
        kl_coef=cfg.kl_coef,
        kl=cfg.kl_estimator,
        agg=cfg.loss_agg_mode,
        unbiased=cfg.std_unbiased,
        norm_by_std=cfg.norm_adv_by_std,
        eps=cfg.adv_eps,
        advantages=advantages,
        normaliser=normaliser,
        norm_length=cfg.norm_length,
        behaviour=behaviour,
        tis_cap=cfg.tis_cap,
    )
    assert loss.item() == pytest.approx(want_loss, rel=1e-4, abs=1e-5)
    # fp32 vs fp64: rounding is absolute (e.g. exp(x) - 1 near 0), so bound it by the largest gradient.
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-5 * float(want_grad.abs().max()))
    assert set(metrics) == set(want_metrics)
    for name, value in want_metrics.items():
        assert metrics[name].item() == pytest.approx(value, rel=1e-4, abs=1e-5), name
    return loss, grad, metrics


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_reference_matches_fp64_for_every_aggregation_mode_and_kl_estimator(mode, estimator):
    cfg = GRPOLossConfig(loss_agg_mode=mode, kl_estimator=estimator, kl_coef=0.05, clip_high=0.28)
    _, _, metrics = _check(
        cfg, make_batch([4, 1, 6, 3, 2], 24, seed=_seed(), empty_rows=(2,), reward="uniform")
    )
    assert metrics["pg_clipfrac_low"] > 0 and metrics["pg_clipfrac_high"] > 0


def test_reference_matches_fp64_with_dual_clip_and_the_dual_clip_fires():
    cfg = GRPOLossConfig(dual_clip_c=2.0, loss_agg_mode="seq-mean-token-mean")
    _, _, metrics = _check(cfg, make_batch([8, 8, 8], 32, seed=_seed(), reward="uniform"))
    assert metrics["pg_clipfrac_dual"] > 0


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum"])
def test_reference_matches_fp64_with_truncated_importance_weights_that_hit_the_cap(mode):
    cfg = GRPOLossConfig(tis_cap=1.5, loss_agg_mode=mode, kl_coef=0.05, dual_clip_c=3.0)
    batch = make_batch([6, 4, 6], 24, seed=_seed(), reward="uniform")
    old, mask = batch[1], batch[3]
    g = torch.Generator().manual_seed(_seed())
    behaviour = old + 0.6 * torch.randn(old.shape, generator=g)  # engine log-probs off by up to ~2 nats
    w = torch.exp(old - behaviour)[mask != 0]
    assert (w > 1.5).any() and (w < 1).any()  # the cap truncates some tokens, others are down-weighted
    _check(cfg, batch, behaviour=behaviour)
    untruncated, _, _ = _check(GRPOLossConfig(loss_agg_mode=mode, kl_coef=0.05, dual_clip_c=3.0), batch)
    # the weights act: without the KL term each token's gradient is the plain one times its capped weight (a
    # comparison of losses could not tell: group-normalised advantages make the policy term's sum near 0)
    _, g_tis, _ = _check(
        GRPOLossConfig(tis_cap=1.5, loss_agg_mode=mode, dual_clip_c=3.0), batch, behaviour=behaviour
    )
    _, g_plain, _ = _check(GRPOLossConfig(loss_agg_mode=mode, dual_clip_c=3.0), batch)
    capped = torch.where(mask != 0, torch.clamp(torch.exp(old - behaviour), max=1.5), 0.0)  # pads: anything
    # fp32 on both sides: a few roundings of each gradient element, far below 1e-6 of the largest
    torch.testing.assert_close(g_tis, capped * g_plain, rtol=1e-5, atol=1e-6 * float(g_plain.abs().max()))
    assert not torch.allclose(g_tis, g_plain)
    # a behaviour policy equal to the old one gives weight 1: the plain loss
    same, _, _ = _check(cfg, batch, behaviour=old.clone())
    assert same.item() == pytest.approx(untruncated.item(), rel=1e-6, abs=1e-7)


def test_tis_without_behaviour_logprobs_is_rejected_before_work():
    batch = make_batch([4], 8, seed=0)
    with pytest.raises(ValueError, match="tis_cap=2.0 needs behaviour_logp"):
        grpo_loss_reference(*batch, GRPOLossConfig(tis_cap=2.0))


@pytest.mark.parametrize("unbiased", [True, False])
def test_reference_matches_fp64_without_std_division_and_for_either_std(unbiased):
    cfg = GRPOLossConfig(norm_adv_by_std=False, std_unbiased=unbiased)
    _check(cfg, make_batch([3, 5, 2], 16, seed=_seed(), reward="uniform"), ref=False)
    _check(GRPOLossConfig(std_unbiased=unbiased), make_batch([3, 5, 2], 16, seed=_seed(), reward="uniform"))


@pytest.mark.parametrize("mode", MODES)
def test_reference_divides_by_a_passed_normaliser(mode):
    cfg = GRPOLossConfig(loss_agg_mode=mode, kl_coef=0.1)
    _check(cfg, make_batch([4, 4], 20, seed=_seed()), normaliser=173.0)


def test_reference_uses_precomputed_advantages_instead_of_rewards():
    batch = make_batch([4, 3, 5], 12, seed=_seed())
    advantages = torch.randn(12)
    _check(GRPOLossConfig(), batch[:4] + (None, None), advantages=advantages)


def test_precomputed_advantages_give_the_same_loss_as_rewards():
    logp, old, ref, mask, rewards, group_ids = make_batch([4, 3, 5], 12, seed=_seed())
    cfg = GRPOLossConfig(kl_coef=0.01)
    adv = compute_advantages(rewards, group_ids, cfg)
    a, _ = grpo_loss_reference(logp, old, ref, mask, rewards, group_ids, cfg)
    b, _ = grpo_loss_reference(logp, old, ref, mask, None, None, cfg, advantages=adv)
    assert a.item() == b.item()


def test_all_masked_batch_gives_zero_loss_and_finite_metrics():
    logp, old, ref, mask, rewards, group_ids = make_batch([2, 2], 8, seed=_seed())
    x = logp.clone().requires_grad_()
    loss, metrics = grpo_loss_reference(
        x, old, ref, torch.zeros_like(mask), rewards, group_ids, GRPOLossConfig()
    )
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.item() == 0.0 and grad.eq(0).all()
    assert all(torch.isfinite(v) for v in metrics.values())


def test_padded_positions_are_ignored_whatever_they_hold():
    logp, old, ref, mask, rewards, group_ids = make_batch([3, 3], 10, seed=_seed())
    cfg = GRPOLossConfig(kl_coef=0.1)
    junk = [torch.where(mask, t, torch.randn_like(t) * 100) for t in (logp, old, ref)]
    x, y = logp.clone().requires_grad_(), junk[0].clone().requires_grad_()
    a, _ = grpo_loss_reference(x, old, ref, mask, rewards, group_ids, cfg)
    b, _ = grpo_loss_reference(y, junk[1], junk[2], mask, rewards, group_ids, cfg)
    assert a.item() == b.item()
    assert torch.equal(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, y)[0])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("clip_low", 1.5),
        ("clip_high", -0.1),
        ("dual_clip_c", 0.9),
        ("kl_coef", -1.0),
        ("kl_estimator", "k7"),
        ("loss_agg_mode", "sum"),
        ("adv_eps", -1e-6),
        ("log_ratio_clamp", 0.0),
        ("norm_length", 0),
    ],
)
def test_config_validate_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GRPOLossConfig(**{field: value}).validate()


def test_kl_coef_without_ref_logp_is_rejected_before_work():
    logp, old, _, mask, rewards, group_ids = make_batch([2, 2], 8, seed=_seed())
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss_reference(logp, old, None, mask, rewards, group_ids, GRPOLossConfig(kl_coef=0.1))


def test_mismatched_shapes_are_rejected_naming_the_tensor():
    logp, old, ref, mask, rewards, group_ids = make_batch([2, 2], 8, seed=_seed())
    with pytest.raises(ValueError, match="old_logp"):
        grpo_loss_reference(logp, old[:, :5], ref, mask, rewards, group_ids, GRPOLossConfig())
