"""The fused Triton GRPO op (mmr1_mega.ops.grpo_loss) equals the eager reference (mmr1_mega.algo) for loss,
every metric and the gradient. Runs under TRITON_INTERPRET=1 (see conftest.py); the reference itself is
checked against an independent fp64 computation in tests/algo."""

import pytest
import torch

from mmr1_mega.algo import GRPOLossConfig, compute_advantages, grpo_loss_reference
from mmr1_mega.ops import grpo_loss, triton_usable
from mmr1_mega.ops.grpo import kernels
from tests.ops.ops_batches import make_batch
from tests.tolerances import fp32_advantage_bound

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
ESTIMATORS = ["k1", "abs", "mse", "low_var_kl"]


def _seed() -> int:
    return int(torch.randint(0, 10**6, ()))


def _run(fn, logp, *args, **kwargs):
    x = logp.clone().requires_grad_()
    loss, metrics = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss, metrics, grad


def _assert_grad_close(got, want, rel=1e-5):
    """Relative to the largest gradient: fp32 rounding (e.g. exp(x) - 1 near 0) is absolute, not per element."""
    torch.testing.assert_close(got.float(), want.float(), rtol=rel, atol=rel * float(want.abs().max()))


def _compare(cfg, batch, advantages=None, normaliser=None, ref=True, behaviour=None):
    """Kernel vs reference on the same inputs; returns the kernel's (loss, metrics, grad).

    Tolerances: the loss and the metrics are means of O(1) per-token terms (ratios, clipped ratios, KL
    estimates) of both signs, reduced in blocks by the kernel and pairwise by torch. Pairwise / blocked fp32
    summation of n terms errs by at most ~log2(n) * u * sum|x|, i.e. relative to the MEAN magnitude about
    log2(n) * u = 20 * 6e-8 = 1.2e-6 at the largest n here (330k tokens), absolute because signed terms
    cancel: atol = rtol = 1e-5 holds it with ~8x to spare. The bf16 gradient is held to bf16's own
    resolution (2**-7 relative, ~2 roundings: 1.6e-2).
    When both sides compute the advantages from rewards, they sum each group in a different order (the
    kernel in a tree), so their advantages may differ by twice the fp32 rounding bound (tests/tolerances.py),
    which is large for a group with a tiny std; that difference reaches the loss (and the metrics built from
    the advantages) through dL/da: sum_i |dL/da_i| x 2 bound_i is added to their tolerance.
    """
    logp, old, ref_logp, mask, rewards, group_ids = batch
    args = (old, ref_logp if ref else None, mask, rewards, group_ids, cfg)
    kw = dict(advantages=advantages, loss_normaliser=normaliser, behaviour_logp=behaviour)
    got = _run(grpo_loss, logp, *args, **kw)
    want = _run(grpo_loss_reference, logp, *args, **kw)
    extra = _advantage_rounding_reach(logp, args, kw) if advantages is None and rewards is not None else 0.0
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5 + extra)
    assert got[2].dtype == logp.dtype
    _assert_grad_close(got[2], want[2], rel=1.6e-2 if logp.dtype == torch.bfloat16 else 1e-5)
    assert set(got[1]) == set(want[1])
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-5, atol=1e-5 + extra, msg=name)
    return got


def _advantage_rounding_reach(logp, args, kw) -> float:
    """How far two fp32 computations of the advantages (each within fp32_advantage_bound of the exact ones)
    can move the loss and the advantage metrics: sum_i |dL/da_i| x 2 bound_i, or the mean bound if larger."""
    old, ref_logp, mask, rewards, group_ids, cfg = args
    adv = compute_advantages(rewards, group_ids, cfg)
    bound = 2 * fp32_advantage_bound(
        rewards, group_ids, adv.double(), cfg.std_unbiased, cfg.norm_adv_by_std, cfg.adv_eps
    )
    leaf = adv.clone().requires_grad_()
    loss, _ = grpo_loss_reference(
        logp.detach().float(), old, ref_logp, mask, rewards, group_ids, cfg, **{**kw, "advantages": leaf}
    )
    (d_adv,) = torch.autograd.grad(loss, leaf)
    return max(float((d_adv.double().abs() * bound).sum()), float(bound.mean()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_kernel_matches_reference_for_every_aggregation_mode_and_kl_estimator(mode, estimator):
    cfg = GRPOLossConfig(loss_agg_mode=mode, kl_estimator=estimator, kl_coef=0.05, clip_high=0.28)
    _, metrics, _ = _compare(
        cfg, make_batch([4, 1, 6, 3, 2], 40, seed=_seed(), empty_rows=(5,), reward="uniform")
    )
    assert metrics["pg_clipfrac_low"] > 0 and metrics["pg_clipfrac_high"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_kernel_matches_reference_with_dual_clip_firing(mode):
    cfg = GRPOLossConfig(dual_clip_c=2.0, loss_agg_mode=mode, kl_coef=0.01)
    _, metrics, _ = _compare(cfg, make_batch([8, 8, 8], 48, seed=_seed(), reward="uniform"))
    assert metrics["pg_clipfrac_dual"] > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_reference_with_truncated_importance_sampling(mode, dtype):
    cfg = GRPOLossConfig(tis_cap=2.0, dual_clip_c=3.0, loss_agg_mode=mode, kl_coef=0.02)
    batch = make_batch([8, 4, 8], 40, seed=_seed(), reward="uniform", dtype=dtype, empty_rows=(3,))
    old = batch[1]
    g = torch.Generator().manual_seed(_seed())
    behaviour = (old.float() + 0.7 * torch.randn(old.shape, generator=g)).to(dtype)
    behaviour[~(batch[3] != 0)] = float("nan")  # padded positions are never read
    assert (torch.exp(old.float() - behaviour.float())[batch[3] != 0] > 2.0).any()  # the cap fires
    loss, _, _ = _compare(cfg, batch, behaviour=behaviour)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("estimator", ["mse", "low_var_kl"])
def test_kernel_matches_reference_for_bf16_inputs_and_returns_a_bf16_grad(mode, estimator):
    cfg = GRPOLossConfig(loss_agg_mode=mode, kl_estimator=estimator, kl_coef=0.1, dual_clip_c=3.0)
    _compare(cfg, make_batch([5, 3, 4, 1], 64, seed=_seed(), dtype=torch.bfloat16, empty_rows=(0,)))


def test_kernel_matches_reference_for_single_member_groups_and_fully_masked_sequences():
    cfg = GRPOLossConfig(loss_agg_mode="seq-mean-token-mean", kl_coef=0.05)
    batch = make_batch([1, 1, 5, 1, 2, 1], 24, seed=_seed(), empty_rows=(0, 3, 7), reward="uniform")
    _, metrics, grad = _compare(cfg, batch)
    assert grad[[0, 3, 7]].eq(0).all()
    assert metrics["zero_std_group_frac"].item() == pytest.approx(4 / 6)


def test_all_equal_rewards_give_zero_advantage_zero_policy_grad_and_no_nan():
    logp, old, ref, mask, _, group_ids = make_batch([4, 4, 2], 16, seed=_seed())
    rewards = torch.full((10,), 0.3)
    loss, metrics, grad = _compare(GRPOLossConfig(), (logp, old, ref, mask, rewards, group_ids))
    assert loss.item() == 0.0 and grad.eq(0).all()
    assert metrics["advantage_std"].item() == 0.0 and metrics["zero_std_group_frac"].item() == 1.0
    assert all(torch.isfinite(v) for v in metrics.values())


def test_kernel_matches_reference_with_precomputed_advantages_with_and_without_rewards():
    logp, old, ref, mask, rewards, group_ids = make_batch([4, 6, 3], 32, seed=_seed())
    cfg = GRPOLossConfig(kl_coef=0.02)
    advantages = torch.randn(13)
    _compare(cfg, (logp, old, ref, mask, rewards, group_ids), advantages=advantages)
    _, metrics, _ = _compare(cfg, (logp, old, ref, mask, None, None), advantages=advantages)
    assert "reward_mean" not in metrics


def test_precomputed_advantages_give_the_kernel_the_same_loss_as_rewards():
    logp, old, ref, mask, rewards, group_ids = make_batch([4, 6, 3], 32, seed=_seed())
    cfg = GRPOLossConfig(kl_coef=0.02)
    a, _, grad_a = _run(grpo_loss, logp, old, ref, mask, rewards, group_ids, cfg)
    adv = compute_advantages(rewards, group_ids, cfg)
    b, _, grad_b = _run(grpo_loss, logp, old, ref, mask, None, None, cfg, advantages=adv)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    _assert_grad_close(grad_a, grad_b)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_kernel_matches_reference_for_biased_or_unbiased_std_and_without_std_division(unbiased, norm_by_std):
    cfg = GRPOLossConfig(std_unbiased=unbiased, norm_adv_by_std=norm_by_std, adv_eps=1e-4)
    _compare(cfg, make_batch([2, 7, 3, 5], 24, seed=_seed(), reward="uniform"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_kernel_matches_reference_with_a_passed_loss_normaliser(mode, as_tensor):
    normaliser = torch.tensor(517.0) if as_tensor else 517
    cfg = GRPOLossConfig(loss_agg_mode=mode, kl_coef=0.05, norm_length=100)
    _compare(cfg, make_batch([3, 4, 5], 32, seed=_seed()), normaliser=normaliser)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batches_with_batch_advantages_and_global_normaliser_add_up_to_the_full_batch(mode):
    logp, old, ref, mask, rewards, group_ids = make_batch([4, 4, 4, 4], 32, seed=_seed(), empty_rows=(3,))
    cfg = GRPOLossConfig(loss_agg_mode=mode, kl_coef=0.05)
    full, _, full_grad = _run(grpo_loss, logp, old, ref, mask, rewards, group_ids, cfg)
    adv = compute_advantages(rewards, group_ids, cfg)
    counts = mask.sum(-1)
    normaliser = counts.sum().float() if mode == "token-mean" else (counts > 0).sum().float()
    # Interleaved split: every micro-batch holds only part of each (shuffled) group.
    parts = [torch.arange(k, 16, 3) for k in range(3)]
    total, grad = torch.zeros(()), torch.zeros_like(full_grad)
    for idx in parts:
        loss, _, g = _run(
            grpo_loss,
            logp[idx],
            old[idx],
            ref[idx],
            mask[idx],
            None,
            None,
            cfg,
            advantages=adv[idx],
            loss_normaliser=normaliser,
        )
        total += loss
        grad[idx] = g
    torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-5)
    _assert_grad_close(grad, full_grad)


def test_kernel_without_ref_logp_reports_zero_kl():
    _, metrics, _ = _compare(GRPOLossConfig(kl_coef=0.0), make_batch([3, 3], 16, seed=_seed()), ref=False)
    assert metrics["kl"].item() == 0.0


def test_kernel_matches_reference_when_blocks_tile_rows_columns_and_sequences():
    # 300 sequences x 1100 tokens: several programs per kernel, two column chunks, several group tiles
    # and several finishing iterations, so every loop of every kernel runs more than once.
    sizes = [8] * 30 + [5] * 10 + [1] * 10
    cfg = GRPOLossConfig(loss_agg_mode="seq-mean-token-mean", kl_coef=0.05, dual_clip_c=3.0)
    _compare(cfg, make_batch(sizes, 1100, seed=_seed(), empty_rows=(7, 250), reward="uniform"))


def test_kernel_is_bitwise_deterministic_run_to_run():
    batch = make_batch([6, 2, 5], 40, seed=_seed())
    cfg = GRPOLossConfig(kl_coef=0.1, loss_agg_mode="seq-mean-token-sum")
    a = _run(grpo_loss, batch[0], *batch[1:], cfg)
    b = _run(grpo_loss, batch[0], *batch[1:], cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_kernel_reads_row_strided_inputs_and_numeric_masks():
    logp, old, ref, mask, rewards, group_ids = make_batch([3, 4], 20, seed=_seed())
    wide = [torch.cat([t, torch.randn(7, 9)], dim=1)[:, :20] for t in (logp, old, ref)]
    assert not wide[0].is_contiguous()
    cfg = GRPOLossConfig(kl_coef=0.1)
    got = _run(grpo_loss, wide[0], wide[1], wide[2], mask.float(), rewards, group_ids, cfg)
    want = _run(grpo_loss_reference, logp, old, ref, mask, rewards, group_ids, cfg)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    _assert_grad_close(got[2], want[2])


def test_backward_scales_the_saved_gradient_by_grad_output():
    batch = make_batch([4, 4], 16, seed=_seed())
    x = batch[0].clone().requires_grad_()
    loss, _ = grpo_loss(x, *batch[1:], GRPOLossConfig(kl_coef=0.1))
    (2.5 * loss).backward()
    _, _, grad = _run(grpo_loss, batch[0], *batch[1:], GRPOLossConfig(kl_coef=0.1))
    torch.testing.assert_close(x.grad, 2.5 * grad)


def test_metrics_are_zero_dim_fp32_tensors_on_the_input_device_without_grad():
    batch = make_batch([3, 3], 8, seed=_seed())
    _, metrics, _ = _run(grpo_loss, batch[0], *batch[1:], GRPOLossConfig())
    for name, value in metrics.items():
        assert value.shape == () and value.dtype == torch.float32 and not value.requires_grad, name
        assert value.device == batch[0].device


def test_without_cuda_or_interpreter_the_op_falls_back_to_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not triton_usable(torch.device("cpu"))
    batch = make_batch([3, 2], 12, seed=_seed())
    cfg = GRPOLossConfig(kl_coef=0.1)
    got = _run(grpo_loss, batch[0], *batch[1:], cfg)
    want = _run(grpo_loss_reference, batch[0], *batch[1:], cfg)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])


def test_kernel_module_is_rebuilt_when_the_interpreter_setting_changes(monkeypatch):
    assert kernels().INTERPRETED
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kernels().INTERPRETED
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels().INTERPRETED


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernel_on_cuda_matches_reference(monkeypatch, dtype):
    monkeypatch.delenv("TRITON_INTERPRET")
    batch = [t.cuda() for t in make_batch([8] * 64, 3000, seed=_seed(), dtype=dtype, empty_rows=(5,))]
    cfg = GRPOLossConfig(loss_agg_mode="seq-mean-token-mean", kl_coef=0.05, dual_clip_c=3.0)
    assert kernels().INTERPRETED is False
    _compare(cfg, tuple(batch))


def test_the_implementation_that_runs_is_named(monkeypatch):
    import torch

    from mmr1_mega.ops import loss_implementation

    assert loss_implementation(torch.device("cpu")) == "triton-interpreter"  # conftest sets TRITON_INTERPRET
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert loss_implementation(torch.device("cpu")) == "eager-reference"
    assert loss_implementation(torch.device("cuda")) == "triton"
