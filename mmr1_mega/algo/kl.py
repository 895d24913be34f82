"""Per-token KL estimators between the policy and the reference policy, eager torch reference.

With ``d = logp - ref_logp`` on tokens sampled from the policy (Schulman, "Approximating KL divergence",
http://joschu.net/blog/kl-approx.html):

- ``k1``: ``d`` (unbiased, high variance, can be negative);
- ``abs``: ``|d|``;
- ``mse`` (k2): ``d**2 / 2``;
- ``low_var_kl`` (k3): ``exp(-d) - (-d) - 1``, with ``-d`` clamped to [-20, 20] before exp and the result
  clamped to [-10, 10] (as GRPO implementations do, to keep a rare huge ratio from dominating the loss).
"""

from __future__ import annotations

import torch

from mmr1_mega.algo.config import KL_ALIASES, KL_ESTIMATORS

K3_LOG_RATIO_CLAMP = 20.0
K3_VALUE_CLAMP = 10.0


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Elementwise KL estimate, differentiable in ``logp``.

    Takes:
        logp, ref_logp: same-shape log-probabilities of the sampled tokens; estimator: see module docstring.
    Returns:
        a tensor of the broadcast shape, in the promoted dtype of the inputs.
    Raises:
        ValueError: on an unknown estimator name.
    """
    name = KL_ALIASES.get(estimator, estimator)
    d = logp - ref_logp
    if name == "k1":
        return d
    if name == "abs":
        return d.abs()
    if name == "mse":
        return 0.5 * d * d
    if name == "low_var_kl":
        neg = torch.clamp(-d, -K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
        return torch.clamp(torch.exp(neg) - neg - 1.0, -K3_VALUE_CLAMP, K3_VALUE_CLAMP)
    raise ValueError(f"kl estimator {estimator!r} is unknown; choose one of {', '.join(KL_ESTIMATORS)}")
