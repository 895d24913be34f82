"""Clipped GRPO policy loss, KL penalty, aggregation and metrics: the eager torch reference semantics.

Layout (what the actor produces): ``logp``, ``old_logp``, ``ref_logp`` and ``mask`` are ``[num_seqs, max_len]``
padded tensors, response tokens where ``mask`` is non-zero; values at padded positions are ignored (they may
hold anything, even inf) and receive exactly zero gradient. ``rewards`` and ``group_ids`` are ``[num_seqs]``
(see ``mmr1_mega.algo.advantages``); ``advantages`` is ``[num_seqs]``, broadcast over each sequence's tokens.

Per token (PPO, arXiv 1707.06347; GRPO, arXiv 2402.03300 Sec. 4.1; MMR1 Sec. 3)::

    ratio = exp(clamp(logp - old_logp, -20, 20))
    pg    = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))
    pg    = min(pg, -A * c)            if dual_clip_c = c is set and A < 0   (arXiv 1912.09729)
    pg    = pg * min(exp(clamp(old_logp - behaviour_logp, -20, 20)), tis_cap)   if tis_cap is set (TIS)
    tok   = pg + kl_coef * KL(logp, ref_logp)                                (mmr1_mega.algo.kl)

Aggregation with ``n_i`` valid tokens in sequence i, ``N`` = sum of n_i, ``S`` = number of sequences with at
least one valid token, ``L`` = ``cfg.norm_length`` or the padded width::

    token-mean               sum_i sum_t tok / N
    seq-mean-token-mean      sum_i (sum_t tok / n_i) / S
    seq-mean-token-sum       sum_i (sum_t tok) / S
    seq-mean-token-sum-norm  sum_i (sum_t tok / L) / S              (Dr. GRPO, arXiv 2503.20783)

``loss_normaliser``, when given, replaces ``N`` (token-mean) or ``S`` (seq-mean-*) — e.g. the global token
or sequence count over data-parallel ranks and micro-batches, so that summing the per-micro-batch losses
gives the loss of the whole batch. Local counts are clamped to >= 1 so an all-masked batch gives 0, not NaN.
"""

from __future__ import annotations

import torch

from mmr1_mega.algo.advantages import check_group_inputs, compute_advantages, reward_metrics
from mmr1_mega.algo.config import GRPOLossConfig
from mmr1_mega.algo.kl import kl_penalty

Normaliser = float | int | torch.Tensor | None


def policy_loss_per_token(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, cfg: GRPOLossConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped (and optionally dual-clipped) policy-gradient loss per token, in fp32.

    Takes:
        logp, old_logp: ``[num_seqs, max_len]``; adv: ``[num_seqs, 1]`` or broadcastable; cfg: clip ranges.
    Returns:
        ``(loss, clipped_low, clipped_high, dual_clipped)``: the loss and bool tensors marking tokens whose
        loss is the lower clip (A < 0, ratio < 1 - clip_low), the upper clip (A > 0, ratio > 1 + clip_high),
        or the dual clip (A < 0, ratio > c).
    """
    logp = logp.to(torch.float32)
    log_ratio = torch.clamp(logp - old_logp.to(torch.float32), -cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    lo, hi = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, lo, hi)
    loss = torch.maximum(unclipped, clipped)
    clipped_low = (adv < 0) & (ratio < lo)
    clipped_high = (adv > 0) & (ratio > hi)
    dual = torch.zeros_like(clipped_low)
    if cfg.dual_clip_c is not None:
        bound = -adv * cfg.dual_clip_c
        dual = (adv < 0) & (bound < loss)
        loss = torch.where(dual, bound.expand_as(loss), loss)
    return loss, clipped_low, clipped_high, dual


def tis_weights(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, cfg: GRPOLossConfig) -> torch.Tensor:
    """Truncated importance weights ``min(exp(clamp(old - behaviour)), tis_cap)`` per token, in fp32 (no
    gradient flows through them: neither input depends on the parameters being trained)."""
    d = old_logp.to(torch.float32) - behaviour_logp.to(torch.float32)
    w = torch.exp(torch.clamp(d, -cfg.log_ratio_clamp, cfg.log_ratio_clamp))
    return torch.clamp(w, max=cfg.tis_cap)


def aggregation_weights(
    mask: torch.Tensor, cfg: GRPOLossConfig, loss_normaliser: Normaliser = None
) -> torch.Tensor:
    """Per-sequence weight ``c_i`` such that the aggregated loss is ``sum_i c_i * sum_t mask * tok``.

    Takes:
        mask: ``[num_seqs, max_len]`` (bool or numeric); cfg: chooses the mode; loss_normaliser: see module.
    Returns:
        ``[num_seqs]`` fp32 weights (zero for sequences without valid tokens).
    Raises:
        ValueError: if a Python-number normaliser is not positive.
    """
    if isinstance(loss_normaliser, (int, float)) and loss_normaliser <= 0:
        raise ValueError(f"loss_normaliser={loss_normaliser} must be > 0 (a global token or sequence count)")
    n_tok = (mask != 0).sum(-1).to(torch.float32)
    has_tok = (n_tok > 0).to(torch.float32)
    if cfg.loss_agg_mode == "token-mean":
        denom = n_tok.sum().clamp_min(1.0) if loss_normaliser is None else loss_normaliser
        return has_tok / denom
    n_seq = has_tok.sum().clamp_min(1.0) if loss_normaliser is None else loss_normaliser
    if cfg.loss_agg_mode == "seq-mean-token-mean":
        return has_tok / (n_tok.clamp_min(1.0) * n_seq)
    if cfg.loss_agg_mode == "seq-mean-token-sum":
        return has_tok / n_seq
    length = cfg.norm_length if cfg.norm_length is not None else mask.shape[-1]
    return has_tok / (float(length) * n_seq)


def grpo_loss_reference(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    mask: torch.Tensor,
    rewards: torch.Tensor | None,
    group_ids: torch.Tensor | None,
    cfg: GRPOLossConfig,
    advantages: torch.Tensor | None = None,
    loss_normaliser: Normaliser = None,
    behaviour_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss and its metrics in eager torch (fp32 arithmetic); differentiable in ``logp``.

    Takes: see the module docstring for layout and formulas. ``advantages`` (``[num_seqs]``), when given,
    replaces the advantages computed from ``rewards`` / ``group_ids`` (then those two may be None).
    ``behaviour_logp`` (same layout as logp): the rollout engine's log-probs, needed when ``cfg.tis_cap``.
    Returns:
        ``(loss, metrics)``: a 0-dim fp32 loss and a dict of 0-dim fp32 device tensors (no host sync):
        ``pg_loss`` (the aggregated policy term), ``pg_clipfrac_low``, ``pg_clipfrac_high``,
        ``pg_clipfrac_dual``, ``ppo_kl`` (mean of old_logp - logp), ``kl`` (mean of the KL estimator, 0
        without ref_logp) — token means over the mask —, ``advantage_mean``, ``advantage_std`` (over
        sequences) and, when rewards and group_ids are given, ``reward_mean``, ``reward_std`` and
        ``zero_std_group_frac`` (see ``mmr1_mega.algo.advantages.reward_metrics``).
    Raises:
        ValueError: on mismatched shapes, missing inputs or a bad config.
    """
    check_loss_inputs(logp, old_logp, ref_logp, mask, rewards, group_ids, cfg, advantages, behaviour_logp)
    if advantages is None:
        advantages = compute_advantages(rewards, group_ids, cfg)
    adv = advantages.to(torch.float32)
    valid = mask != 0
    # Padded positions may hold anything (even inf); substitute zeros so they give zero loss and zero grad.
    logp_v = torch.where(valid, logp.to(torch.float32), 0.0)
    old_v = torch.where(valid, old_logp.to(torch.float32), 0.0)
    pg, clip_lo, clip_hi, dual = policy_loss_per_token(logp_v, old_v, adv[:, None], cfg)
    if cfg.tis_cap is not None:
        pg = pg * tis_weights(old_v, torch.where(valid, behaviour_logp.to(torch.float32), 0.0), cfg)
    if ref_logp is not None:
        kl = kl_penalty(logp_v, torch.where(valid, ref_logp.to(torch.float32), 0.0), cfg.kl_estimator)
    else:
        kl = torch.zeros_like(pg)
    weights = aggregation_weights(mask, cfg, loss_normaliser)[:, None]
    vf = valid.to(torch.float32)
    pg_loss = (weights * vf * pg).sum()
    kl_loss = (weights * vf * kl).sum()
    loss = pg_loss + cfg.kl_coef * kl_loss if ref_logp is not None else pg_loss

    n_tok = vf.sum().clamp_min(1.0)

    def token_mean(x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) * vf).sum() / n_tok

    metrics = {
        "pg_loss": pg_loss.detach(),
        "pg_clipfrac_low": token_mean(clip_lo),
        "pg_clipfrac_high": token_mean(clip_hi),
        "pg_clipfrac_dual": token_mean(dual),
        "ppo_kl": token_mean(old_v - logp_v.detach()),
        "kl": token_mean(kl.detach()),
        "advantage_mean": adv.mean(),
        "advantage_std": adv.std(correction=0),
    }
    if rewards is not None and group_ids is not None:
        metrics.update(reward_metrics(rewards, group_ids, cfg))
    return loss, metrics


def check_loss_inputs(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    mask: torch.Tensor,
    rewards: torch.Tensor | None,
    group_ids: torch.Tensor | None,
    cfg: GRPOLossConfig,
    advantages: torch.Tensor | None,
    behaviour_logp: torch.Tensor | None = None,
) -> None:
    """Validate shapes and the presence of inputs (shape checks only: no host sync).

    Raises:
        ValueError: one line naming the offending input and the expected layout.
    """
    cfg.validate()
    if logp.dim() != 2 or logp.numel() == 0:
        raise ValueError(
            f"logp has shape {tuple(logp.shape)}; expected a non-empty [num_seqs, max_len] padded with a mask"
        )
    named = {"old_logp": old_logp, "mask": mask} | ({"ref_logp": ref_logp} if ref_logp is not None else {})
    if cfg.tis_cap is not None:
        if behaviour_logp is None:
            raise ValueError(
                f"tis_cap={cfg.tis_cap} needs behaviour_logp (the rollout engine's log-probs); pass them or "
                "set tis_cap=None"
            )
        named["behaviour_logp"] = behaviour_logp
    for name, t in named.items():
        if t.shape != logp.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but logp has {tuple(logp.shape)}; pad both alike"
            )
    if cfg.kl_coef > 0 and ref_logp is None:
        raise ValueError(
            f"kl_coef={cfg.kl_coef} needs ref_logp; pass the reference logprobs or set kl_coef=0"
        )
    num_seqs = logp.shape[0]
    if advantages is None:
        if rewards is None or group_ids is None:
            raise ValueError(
                "pass rewards and group_ids, or precomputed advantages= (see compute_advantages)"
            )
    elif advantages.shape != (num_seqs,):
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}; expected [num_seqs]=[{num_seqs}]")
    if rewards is not None and group_ids is not None:
        check_group_inputs(rewards, group_ids)
        if rewards.shape[0] != num_seqs:
            raise ValueError(f"rewards has {rewards.shape[0]} entries but logp has {num_seqs} sequences")
    others = named | {"rewards": rewards, "group_ids": group_ids, "advantages": advantages}
    for name, t in others.items():
        if t is not None and t.device != logp.device:
            raise ValueError(f"{name} is on {t.device} but logp is on {logp.device}; move them to one device")
