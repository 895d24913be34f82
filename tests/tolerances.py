"""Tolerances derived from the computation being compared, for tests that compare two fp32 computations
of the same quantity done in different orders (parallel layouts, fused vs eager, engine vs transformers).

Nothing here is read off one machine's output: each bound says what it assumes about the inputs.
"""

from __future__ import annotations

import torch

FP32_EPS = torch.finfo(torch.float32).eps  # 2**-23: one ulp of 1.0, twice the unit round-off


def adam_first_step_tolerance(
    w0: torch.Tensor,
    w1: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    eps: float,
    grad_rel: float = 0.5,
    grad_floor_rel: float = 2.0**-20,
) -> torch.Tensor:
    """Per-element bound on |w1_a - w1_b| for two runs of Adam's FIRST step (torch Adam / AdamW, no weight
    decay, any betas) from the same weights w0 whose gradients may differ by rounding.

    With bias correction the first step is exactly  w1 = w0 - lr * g / (|g| + eps)  (m_hat = g,
    sqrt(v_hat) = |g|). That map is monotonic in g and its slope lr * eps / (|g| + eps)**2 is 1/eps times
    larger at g = 0 than at |g| >> eps: an element whose gradient is near eps is ill-conditioned, and a
    rounding-level change of g moves its update by a large share of lr. So the bound is the exact spread
    of the update over the interval of gradients the other run may have computed,
        g' in [g - d, g + d],   d = grad_rel * |g| + grad_floor_rel * max|g over the tensor|,
    i.e. the other run's gradient agrees to within half of its own magnitude (grad_rel; far looser than
    fp32 reduction-order effects, so the test does not depend on how a machine sums), or, for elements
    that are zero up to rounding, to within 2**-20 (~1e-6) of the tensor's largest gradient (fp32 sums of
    a few hundred terms carry ~1e-7 relative to their largest term). Plus the rounding of w0 - step in
    fp32 on both sides (one ulp of w1 each) and of the step itself (a few ulps of lr).

    grad: the reference run's gradient as the optimizer saw it (after clipping). All inputs same shape.
    Returns the tolerance tensor (float64).
    """
    w0, w1, g = (t.detach().double() for t in (w0, w1, grad))
    d = grad_rel * g.abs() + grad_floor_rel * g.abs().max()

    def step(x):
        return lr * x / (x.abs() + eps)

    spread = torch.maximum((step(g + d) - step(g)).abs(), (step(g - d) - step(g)).abs())
    rounding = 2 * FP32_EPS * torch.maximum(w0.abs(), w1.abs()) + 4 * FP32_EPS * lr
    return spread + rounding


def assert_within(got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor, what: str) -> None:
    """Element-wise |got - want| <= tol; the failure names the worst element relative to its bound."""
    err = (got.double() - want.double()).abs()
    ratio = err / tol
    worst = int(ratio.argmax())
    if ratio.view(-1)[worst] > 1:
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), err.shape))
        raise AssertionError(
            f"{what}: {int((ratio > 1).sum())} / {err.numel()} elements outside their bound; worst at "
            f"{idx}: |diff| {err.view(-1)[worst].item():.3g} > bound {tol.view(-1)[worst].item():.3g}"
        )


def fp32_forward_bound(text_config, seq_len: int, extra_terms: int = 0) -> float:
    """Relative rounding bound of an fp32 decoder forward (logits, log-probs) computed in another order.

    Higham's worst case for a sum of n products in floating point is gamma_n = n*u / (1 - n*u), relative
    to the sum of the magnitudes; the two computations (transformers vs megatron at some TP / PP / SP)
    round independently, so they may differ by up to twice that. An output of the decoder sits at the end
    of a chain of sums: per layer the q/k/v projections (hidden), the attention over the sequence (seq),
    the output projection (heads * head_dim), the MLP in (hidden) and out (intermediate) and the norms
    (hidden); then the final norm and the LM head (hidden). n is the length of that chain (+ extra_terms,
    e.g. the tokens a weight gradient sums over). Relative to the tensor's largest magnitude (the tests'
    random weights have no catastrophic cancellation), atol = bound * max|reference|.
    """
    h, heads = text_config.hidden_size, text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or h // heads
    per_layer = 3 * h + seq_len + heads * head_dim + text_config.intermediate_size
    n = text_config.num_hidden_layers * per_layer + 2 * h + extra_terms
    u = FP32_EPS / 2
    return 2 * n * u / (1 - n * u)


def fp32_advantage_bound(rewards, group_ids, want, unbiased, norm_by_std, eps: float = 1e-6) -> torch.Tensor:
    """Per-sequence rounding bound of the fp32 advantage a = d / s, d = r - mean, s = std + eps, from a group
    of n: d carries at most (n + 2) u max|r| (the mean's n-term sum, the subtraction), s a relative
    (n + 4) u (the squares' sum, the division, the sqrt, + eps); so |da| <= (n + 2) u max|r| / s + |a| (n + 4) u,
    plus half an ulp for the result; doubled for slack. u = 2**-24 (fp32 unit roundoff)."""
    u = 2.0**-24
    bound = torch.zeros_like(want)
    for g in group_ids.unique():
        idx = group_ids == g
        r = rewards[idx].double()
        n = int(idx.sum())
        scale = r.abs().max()
        if n == 1 or not norm_by_std:
            s = torch.tensor(1.0, dtype=torch.float64)
        else:
            s = r.std(unbiased=unbiased) + eps
        bound[idx] = 2 * ((n + 2) * u * scale / s + want[idx].abs() * (n + 5) * u)
    return bound
