"""The fused GRPO loss op: one public entry point, ``grpo_loss``, over a Triton autograd function.

``grpo_loss`` is the only function the actor calls for the GRPO loss; its semantics are those of
``mmr1_mega.algo.loss.grpo_loss_reference`` (layout, formulas and metrics are documented there), computed by
the kernels of ``mmr1_mega.ops.grpo_kernel``. ``triton_usable`` is the single place that chooses the Triton
path (CUDA tensors, or any tensors with TRITON_INTERPRET=1) over the eager reference.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
import triton

from mmr1_mega.algo.config import KL_ESTIMATORS, LOSS_AGG_MODES, GRPOLossConfig
from mmr1_mega.algo.loss import Normaliser, check_loss_inputs, grpo_loss_reference

_REWARD_METRICS = ("reward_mean", "reward_std", "zero_std_group_frac")


def triton_usable(device: torch.device) -> bool:
    """True when the Triton kernels can run on tensors of ``device``: CUDA, or the Triton interpreter.

    TRITON_INTERPRET is read now (not at import), so tests may set it per test.
    """
    return device.type == "cuda" or bool(triton.knobs.runtime.interpret)


def loss_implementation(device: torch.device) -> str:
    """Which implementation grpo_loss runs for tensors on `device`: "triton" (compiled kernels, CUDA),
    "triton-interpreter" (TRITON_INTERPRET=1) or "eager-reference" (mmr1_mega.algo's torch code)."""
    if triton.knobs.runtime.interpret:
        return "triton-interpreter"
    return "triton" if device.type == "cuda" else "eager-reference"


def grpo_loss(
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
    """GRPO loss (group-normalised advantage, clipped policy loss, KL penalty) and its metrics.

    Takes:
        logp: ``[num_seqs, max_len]`` fp32 or bf16 log-probs of the sampled tokens, requires grad.
        old_logp, ref_logp: same shape (ref_logp may be None when ``cfg.kl_coef == 0``).
        mask: same shape, non-zero on response tokens (bool, int or float).
        rewards, group_ids: ``[num_seqs]``; group ids are arbitrary integers (members need not be
            contiguous). May be None when ``advantages`` is given.
        cfg: the loss config.
        advantages: ``[num_seqs]`` precomputed advantages (``mmr1_mega.algo.compute_advantages`` over the
            whole batch): use this inside micro-batches, which may hold only part of a group.
        loss_normaliser: replaces the local token count (token-mean) or sequence count (seq-mean-*), e.g.
            the global count over data-parallel ranks and micro-batches; a number or a 0-dim tensor.
        behaviour_logp: same shape, the rollout engine's log-probs (needed when ``cfg.tis_cap`` is set).
    Returns:
        ``(loss, metrics)``: 0-dim fp32 loss (backward gives d loss / d logp in logp's dtype) and a dict of
        0-dim fp32 tensors on logp's device, computed without a host sync (keys: see
        ``grpo_loss_reference``; reward keys only when rewards and group_ids are given).
    Raises:
        ValueError: on mismatched shapes, missing inputs or a bad config (before any kernel runs).
    """
    check_loss_inputs(logp, old_logp, ref_logp, mask, rewards, group_ids, cfg, advantages, behaviour_logp)
    if not triton_usable(logp.device):
        return grpo_loss_reference(
            logp,
            old_logp,
            ref_logp,
            mask,
            rewards,
            group_ids,
            cfg,
            advantages,
            loss_normaliser,
            behaviour_logp,
        )
    has_rewards = rewards is not None and group_ids is not None
    beh = behaviour_logp if cfg.tis_cap is not None else None
    loss, metric_vec = _GRPOLossFunction.apply(
        logp, old_logp, ref_logp, mask, rewards, group_ids, advantages, loss_normaliser, cfg, beh
    )
    names = kernels().METRIC_NAMES
    metrics = {
        name: metric_vec[k] for k, name in enumerate(names) if has_rewards or name not in _REWARD_METRICS
    }
    return loss, metrics


def kernels() -> ModuleType:
    """The kernel module, re-imported if TRITON_INTERPRET changed since it was built (triton.jit reads it
    at decoration time, so kernels built for one mode cannot run in the other)."""
    from mmr1_mega.ops import grpo_kernel

    if grpo_kernel.INTERPRETED != bool(triton.knobs.runtime.interpret):
        grpo_kernel = importlib.reload(grpo_kernel)
    return grpo_kernel


def _next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _token_blocks(num_seqs: int, max_len: int, interpreted: bool) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_T) of the token kernels.

    The interpreter costs ~2 ms per program instance, so it gets a few large tiles (up to 32K elements);
    a GPU gets ~2K-element tiles over whole rows so that thousands of programs fill the SMs.
    """
    if interpreted:
        block_t = min(_next_pow2(max_len), 1024)
        return max(1, min(_next_pow2(num_seqs), 32768 // block_t)), block_t
    block_t = min(max(_next_pow2(max_len), 16), 1024)
    return max(1, min(_next_pow2(num_seqs), 2048 // block_t)), block_t


def _as_rowmajor(t: torch.Tensor) -> torch.Tensor:
    """Rows may be strided (e.g. a slice of a wider buffer) but tokens must be contiguous within a row."""
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return t if t.stride(-1) == 1 else t.contiguous()


class _GRPOLossFunction(torch.autograd.Function):
    """Forward: advantages (unless given), the one token pass, the finishing reduction. Backward: one scale."""

    @staticmethod
    def forward(
        ctx, logp, old_logp, ref_logp, mask, rewards, group_ids, advantages, loss_normaliser, cfg, beh
    ):
        k = kernels()
        dev = logp.device
        num_seqs, max_len = logp.shape
        interpreted = k.INTERPRETED
        f32 = dict(dtype=torch.float32, device=dev)

        has_rewards = rewards is not None and group_ids is not None
        if has_rewards:
            rewards_c = rewards.contiguous()
            count = torch.empty(num_seqs, **f32)
            const = torch.empty(num_seqs, **f32)
            adv = torch.empty(num_seqs, **f32)
            block_i = min(_next_pow2(num_seqs), 128) if interpreted else 32
            block_j = min(_next_pow2(num_seqs), 128) if interpreted else 128
            k.group_advantage_kernel[(triton.cdiv(num_seqs, block_i),)](
                rewards_c,
                group_ids.contiguous(),
                adv,
                count,
                const,
                num_seqs,
                cfg.adv_eps,
                UNBIASED=cfg.std_unbiased,
                NORM_BY_STD=cfg.norm_adv_by_std,
                BLOCK_I=block_i,
                BLOCK_J=block_j,
            )
        else:
            rewards_c = count = const = None
        if advantages is not None:
            adv = advantages.detach().to(torch.float32).contiguous()

        logp_c, old_c, mask_c = _as_rowmajor(logp), _as_rowmajor(old_logp), _as_rowmajor(mask)
        has_ref = ref_logp is not None
        ref_c = _as_rowmajor(ref_logp) if has_ref else logp_c
        has_tis = beh is not None
        beh_c = _as_rowmajor(beh) if has_tis else logp_c
        graw = torch.empty(num_seqs, max_len, **f32)
        rowstats = torch.empty(k.NUM_ROW_STATS, num_seqs, **f32)
        block_r, block_t = _token_blocks(num_seqs, max_len, interpreted)
        k.token_forward_kernel[(triton.cdiv(num_seqs, block_r),)](
            logp_c,
            old_c,
            ref_c,
            beh_c,
            mask_c,
            adv,
            graw,
            rowstats,
            num_seqs,
            max_len,
            logp_c.stride(0),
            old_c.stride(0),
            ref_c.stride(0),
            beh_c.stride(0),
            mask_c.stride(0),
            cfg.clip_low,
            cfg.clip_high,
            float(cfg.dual_clip_c or 0.0),
            cfg.kl_coef,
            cfg.log_ratio_clamp,
            float(cfg.tis_cap or 0.0),
            HAS_REF=has_ref,
            HAS_TIS=has_tis,
            HAS_DUAL=cfg.dual_clip_c is not None,
            KL_MODE=KL_ESTIMATORS.index(cfg.kl_estimator_name),
            BLOCK_R=block_r,
            BLOCK_T=block_t,
            num_warps=4,
        )

        if isinstance(loss_normaliser, torch.Tensor):
            norm_kind, norm_value, norm_t = 2, 1.0, loss_normaliser.detach().to(**f32).reshape(1)
        elif loss_normaliser is not None:
            norm_kind, norm_value, norm_t = 1, float(loss_normaliser), adv
        else:
            norm_kind, norm_value, norm_t = 0, 1.0, adv
        weights = torch.empty(num_seqs, **f32)
        loss = torch.zeros((), **f32)
        metric_vec = torch.zeros(k.NUM_METRICS, **f32)
        k.finish_kernel[(1,)](
            rowstats,
            adv,
            rewards_c if has_rewards else adv,
            count if has_rewards else adv,
            const if has_rewards else adv,
            norm_t,
            weights,
            loss,
            metric_vec,
            num_seqs,
            norm_value,
            float(cfg.norm_length or max_len),
            cfg.kl_coef,
            AGG_MODE=LOSS_AGG_MODES.index(cfg.loss_agg_mode),
            NORM_KIND=norm_kind,
            HAS_REF=has_ref,
            HAS_REWARDS=has_rewards,
            BLOCK=min(_next_pow2(num_seqs), 256 if interpreted else 1024),
            num_warps=4,
        )
        ctx.save_for_backward(graw, weights)
        ctx.grad_dtype = logp.dtype
        ctx.mark_non_differentiable(metric_vec)
        return loss, metric_vec

    @staticmethod
    def backward(ctx, grad_loss, _grad_metrics):
        graw, weights = ctx.saved_tensors
        num_seqs, max_len = graw.shape
        grad = torch.empty(num_seqs, max_len, dtype=ctx.grad_dtype, device=graw.device)
        k = kernels()
        block_r, block_t = _token_blocks(num_seqs, max_len, k.INTERPRETED)
        k.token_backward_kernel[(triton.cdiv(num_seqs, block_r),)](
            graw,
            weights,
            grad_loss.to(torch.float32).reshape(1),
            grad,
            num_seqs,
            max_len,
            BLOCK_R=block_r,
            BLOCK_T=block_t,
            num_warps=4,
        )
        return grad, None, None, None, None, None, None, None, None, None
