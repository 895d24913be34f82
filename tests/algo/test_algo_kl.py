"""KL estimators of the eager reference (mmr1_mega.algo.kl) against closed forms in fp64."""

import pytest
import torch

from mmr1_mega.algo import kl_penalty


def _closed_form(d: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and d/dlogp of each estimator as a function of d = logp - ref_logp."""
    if name == "k1":
        return d, torch.ones_like(d)
    if name == "abs":
        return d.abs(), d.sign()
    if name == "mse":
        return d * d / 2, d
    value = torch.exp(-d) + d - 1
    # k3 is clamped at 10 (the value never goes below 0): flat, zero gradient beyond.
    return value.clamp(max=10), torch.where(value > 10, 0.0, 1 - torch.exp(-d))


@pytest.mark.parametrize("name", ["k1", "abs", "mse", "low_var_kl"])
def test_kl_estimator_value_and_gradient_match_closed_form(name):
    logp = (-3 * torch.rand(64, dtype=torch.float64)).requires_grad_()
    ref = logp.detach() + torch.randn(64, dtype=torch.float64)
    value = kl_penalty(logp, ref, name)
    (grad,) = torch.autograd.grad(value.sum(), logp)
    want_value, want_grad = _closed_form(logp.detach() - ref, name)
    torch.testing.assert_close(value.detach(), want_value)
    torch.testing.assert_close(grad, want_grad)


def test_low_var_kl_is_clamped_to_ten_with_zero_gradient_beyond():
    logp = torch.tensor([0.0, -30.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-50.0, 0.0], dtype=torch.float64)
    value = kl_penalty(logp, ref, "low_var_kl")
    (grad,) = torch.autograd.grad(value.sum(), logp)
    assert value.tolist() == [10.0, 10.0]
    assert grad.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("alias", "name"), [("kl", "k1"), ("k2", "mse"), ("k3", "low_var_kl")])
def test_schulman_aliases_name_the_same_estimators(alias, name):
    logp, ref = torch.randn(16), torch.randn(16)
    torch.testing.assert_close(kl_penalty(logp, ref, alias), kl_penalty(logp, ref, name))


def test_unknown_estimator_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k9")
