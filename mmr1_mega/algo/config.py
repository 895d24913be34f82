"""Configuration of the GRPO loss: advantage normalisation, clipping, KL penalty and aggregation.

One dataclass carries every knob of the loss; both the eager reference (``mmr1_mega.algo``) and the fused
Triton op (``mmr1_mega.ops``) read it, so they cannot disagree about defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

KL_ESTIMATORS = ("k1", "abs", "mse", "low_var_kl")
# Schulman's names for the same estimators (http://joschu.net/blog/kl-approx.html).
KL_ALIASES = {"kl": "k1", "k2": "mse", "k3": "low_var_kl"}
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass
class GRPOLossConfig:
    """Every knob of the GRPO loss (MMR1, arXiv 2509.21268, Sec. 3; GRPO: DeepSeekMath, arXiv 2402.03300).

    Attributes:
        clip_low: lower clip range: the ratio is clipped below at ``1 - clip_low``.
        clip_high: upper clip range: the ratio is clipped above at ``1 + clip_high`` ("clip-higher", DAPO).
        dual_clip_c: dual-clip constant ``c > 1`` (Ye et al. 2020, arXiv 1912.09729) bounding the loss of
            negative-advantage tokens at ``-A * c``; ``None`` disables it.
        kl_coef: coefficient of the KL penalty to the reference policy added to the loss.
        kl_estimator: ``k1`` (log-ratio), ``abs``, ``mse`` (k2, half squared log-ratio) or ``low_var_kl``
            (k3, clamped to [-10, 10]); aliases ``kl``, ``k2``, ``k3`` are accepted.
        loss_agg_mode: how per-token losses become one number, see ``mmr1_mega.algo.loss``.
        norm_adv_by_std: divide the group-centred reward by the group std (GRPO); ``False`` keeps only the
            centring (Dr. GRPO, arXiv 2503.20783).
        std_unbiased: unbiased (n - 1) group std when True, population (n) std when False.
        adv_eps: added to the std before dividing.
        log_ratio_clamp: ``logp - old_logp`` is clamped to ``[-log_ratio_clamp, log_ratio_clamp]`` before exp.
        norm_length: the constant token count of ``seq-mean-token-sum-norm``; ``None`` means the padded width
            (``max_len``) of the logp tensor.
        tis_cap: truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings
            you off-policy RL training"): each token's policy term is weighted by
            ``min(exp(old_logp - behaviour_logp), tis_cap)``, behaviour_logp being the rollout engine's
            log-prob of the token — the policy that really sampled it (a step behind under async rollout,
            or another numeric path, e.g. FP8). ``None`` disables it.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip_c: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "low_var_kl"
    loss_agg_mode: str = "token-mean"
    norm_adv_by_std: bool = True
    std_unbiased: bool = True
    adv_eps: float = 1e-6
    log_ratio_clamp: float = 20.0
    norm_length: int | None = None
    tis_cap: float | None = None

    @property
    def kl_estimator_name(self) -> str:
        """The canonical estimator name (aliases resolved)."""
        return KL_ALIASES.get(self.kl_estimator, self.kl_estimator)

    def validate(self) -> GRPOLossConfig:
        """Check every field before any work starts.

        Returns:
            self, so that ``cfg = GRPOLossConfig(...).validate()`` reads naturally.

        Raises:
            ValueError: one line naming the bad field, its value and what to set instead.
        """
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"loss.clip_low={self.clip_low} must be in [0, 1); typical is 0.2")
        if self.clip_high < 0.0:
            raise ValueError(f"loss.clip_high={self.clip_high} must be >= 0; typical is 0.2 to 0.28")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ValueError(f"loss.dual_clip_c={self.dual_clip_c} must be > 1 (e.g. 3.0) or None to disable")
        if self.kl_coef < 0.0:
            raise ValueError(f"loss.kl_coef={self.kl_coef} must be >= 0; use 0 to disable the KL penalty")
        if self.kl_estimator_name not in KL_ESTIMATORS:
            choices = ", ".join(KL_ESTIMATORS + tuple(KL_ALIASES))
            raise ValueError(f"loss.kl_estimator={self.kl_estimator!r} is unknown; choose one of {choices}")
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(
                f"loss.loss_agg_mode={self.loss_agg_mode!r} is unknown; choose one of {', '.join(LOSS_AGG_MODES)}"
            )
        if self.adv_eps < 0.0:
            raise ValueError(f"loss.adv_eps={self.adv_eps} must be >= 0; default is 1e-6")
        if self.log_ratio_clamp <= 0.0:
            raise ValueError(f"loss.log_ratio_clamp={self.log_ratio_clamp} must be > 0; default is 20")
        if self.tis_cap is not None and self.tis_cap <= 0.0:
            raise ValueError(f"loss.tis_cap={self.tis_cap} must be > 0 (typical: 2.0) or None to disable")
        if self.norm_length is not None and self.norm_length < 1:
            raise ValueError(f"loss.norm_length={self.norm_length} must be >= 1 or None (padded width)")
        return self
