"""Triton kernels of the fused GRPO loss (semantics: ``mmr1_mega.algo.loss``; launch: ``mmr1_mega.ops.grpo``).

Four launches, no float atomics, every reduction in a fixed order (bitwise deterministic run to run):

1. ``group_advantage_kernel``: per sequence, the statistics of its group by comparing its group id with all
   ids (tiles of ``BLOCK_I x BLOCK_J``): groups are few and small, so this O(num_seqs^2) compare costs
   microseconds, needs no sort / unique (no host sync) and handles arbitrary, non-contiguous ids.
2. ``token_forward_kernel``: the one pass over the tokens. Each program owns ``BLOCK_R`` whole rows and walks
   them in ``BLOCK_T`` chunks, writing per-token d(token loss)/d(logp) (before aggregation weights) and
   per-row partial sums (policy loss, KL, token count, clip counts, old - new logp).
3. ``finish_kernel``: one program sums the per-row partials in row order, derives the aggregation weight of
   each row (which needs the global counts), and writes the loss and every metric.
4. ``token_backward_kernel``: grad = saved d/dlogp * row weight * grad_output, cast to the input dtype.

Whether ``triton.jit`` builds compiled or interpreted kernels is decided when this module is imported
(triton reads TRITON_INTERPRET at decoration time); ``INTERPRETED`` records it, and ``mmr1_mega.ops.grpo``
reloads this module if the setting has changed since.
"""

from __future__ import annotations

import triton
import triton.language as tl

INTERPRETED = bool(triton.knobs.runtime.interpret)

# Rows of the per-row partial-sum buffer written by token_forward_kernel.
ROW_PG, ROW_KL, ROW_NTOK, ROW_CLIP_LOW, ROW_CLIP_HIGH, ROW_DUAL, ROW_PPO_KL = range(7)
NUM_ROW_STATS = 7

# Slots of the metrics vector written by finish_kernel (the order of ops.grpo.METRIC_NAMES).
METRIC_NAMES = (
    "pg_loss",
    "pg_clipfrac_low",
    "pg_clipfrac_high",
    "pg_clipfrac_dual",
    "ppo_kl",
    "kl",
    "advantage_mean",
    "advantage_std",
    "reward_mean",
    "reward_std",
    "zero_std_group_frac",
)
NUM_METRICS = len(METRIC_NAMES)

KL_K1, KL_ABS, KL_MSE, KL_LOW_VAR = range(4)
AGG_TOKEN_MEAN, AGG_SEQ_MEAN_TOKEN_MEAN, AGG_SEQ_MEAN_TOKEN_SUM, AGG_SEQ_MEAN_TOKEN_SUM_NORM = range(4)


@triton.jit
def _sum(x, axis: tl.constexpr):
    # tl.sum and tl.zeros are themselves @triton.jit functions, built compiled or interpreted when triton is
    # first imported; builtins (tl.reduce, tl.full) adapt at launch. Using only builtins lets these kernels
    # switch to the interpreter after triton was imported (the interpreter maps this combine fn to np.sum).
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def group_advantage_kernel(
    rewards_ptr,
    gid_ptr,
    adv_ptr,
    count_ptr,
    const_ptr,
    S,
    eps,
    UNBIASED: tl.constexpr,
    NORM_BY_STD: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_i = pid * BLOCK_I + tl.arange(0, BLOCK_I)
    valid_i = offs_i < S
    g_i = tl.load(gid_ptr + offs_i, mask=valid_i, other=0)
    r_i = tl.load(rewards_ptr + offs_i, mask=valid_i, other=0.0).to(tl.float32)

    n = tl.full([BLOCK_I], 0.0, tl.float32)
    total = tl.full([BLOCK_I], 0.0, tl.float32)
    differ = tl.full([BLOCK_I], 0.0, tl.float32)
    for j0 in range(0, S, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        valid_j = offs_j < S
        g_j = tl.load(gid_ptr + offs_j, mask=valid_j, other=0)
        r_j = tl.load(rewards_ptr + offs_j, mask=valid_j, other=0.0).to(tl.float32)
        same = (g_i[:, None] == g_j[None, :]) & valid_j[None, :]
        rr = tl.broadcast_to(r_j[None, :], [BLOCK_I, BLOCK_J])
        n += _sum(same.to(tl.float32), axis=1)
        total += _sum(tl.where(same, rr, 0.0), axis=1)
        # Exact test for "all rewards of the group are equal": count members whose reward differs.
        differ += _sum((same & (rr != r_i[:, None])).to(tl.float32), axis=1)
    mean = total / tl.maximum(n, 1.0)

    sq = tl.full([BLOCK_I], 0.0, tl.float32)
    for j0 in range(0, S, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        valid_j = offs_j < S
        g_j = tl.load(gid_ptr + offs_j, mask=valid_j, other=0)
        r_j = tl.load(rewards_ptr + offs_j, mask=valid_j, other=0.0).to(tl.float32)
        same = (g_i[:, None] == g_j[None, :]) & valid_j[None, :]
        dev = r_j[None, :] - mean[:, None]
        sq += _sum(tl.where(same, dev * dev, 0.0), axis=1)

    if UNBIASED:
        denom = tl.maximum(n - 1.0, 1.0)
    else:
        denom = tl.maximum(n, 1.0)
    constant = differ == 0.0
    std = tl.where(constant, 0.0, tl.sqrt(sq / denom))
    centred = tl.where(constant, 0.0, r_i - mean)
    if NORM_BY_STD:
        adv = centred / (std + eps)
    else:
        adv = centred
    tl.store(adv_ptr + offs_i, adv, mask=valid_i)
    tl.store(count_ptr + offs_i, n, mask=valid_i)
    tl.store(const_ptr + offs_i, constant.to(tl.float32), mask=valid_i)


@triton.jit
def token_forward_kernel(
    logp_ptr,
    old_ptr,
    ref_ptr,
    beh_ptr,
    mask_ptr,
    adv_ptr,
    graw_ptr,
    rowstats_ptr,
    S,
    T,
    stride_logp,
    stride_old,
    stride_ref,
    stride_beh,
    stride_mask,
    clip_lo,
    clip_hi,
    dual_c,
    kl_coef,
    log_ratio_clamp,
    tis_cap,
    HAS_REF: tl.constexpr,
    HAS_TIS: tl.constexpr,
    HAS_DUAL: tl.constexpr,
    KL_MODE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < S
    rows64 = rows.to(tl.int64)
    adv = tl.load(adv_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    lower = 1.0 - clip_lo
    upper = 1.0 + clip_hi

    acc_pg = tl.full([BLOCK_R], 0.0, tl.float32)
    acc_kl = tl.full([BLOCK_R], 0.0, tl.float32)
    acc_n = tl.full([BLOCK_R], 0.0, tl.float32)
    acc_lo = tl.full([BLOCK_R], 0.0, tl.float32)
    acc_hi = tl.full([BLOCK_R], 0.0, tl.float32)
    acc_dual = tl.full([BLOCK_R], 0.0, tl.float32)
    acc_ppo = tl.full([BLOCK_R], 0.0, tl.float32)
    for t0 in range(0, T, BLOCK_T):
        cols = t0 + tl.arange(0, BLOCK_T)
        inb = row_ok[:, None] & (cols < T)[None, :]
        m = tl.load(mask_ptr + rows64[:, None] * stride_mask + cols[None, :], mask=inb, other=0)
        valid = inb & (m != 0)
        # Padded positions may hold anything (even inf): read them as 0 so they add nothing, not NaN.
        x = tl.load(logp_ptr + rows64[:, None] * stride_logp + cols[None, :], mask=valid, other=0.0)
        x = x.to(tl.float32)
        o = tl.load(old_ptr + rows64[:, None] * stride_old + cols[None, :], mask=valid, other=0.0)
        o = o.to(tl.float32)

        # ratio = exp(clamp(logp - old, -C, C)); clamp passes gradient inside [-C, C] (inclusive, as torch).
        lr = x - o
        ratio = tl.exp(tl.minimum(tl.maximum(lr, -log_ratio_clamp), log_ratio_clamp))
        d_ratio = tl.where(tl.abs(lr) <= log_ratio_clamp, ratio, 0.0)
        l1 = -adv * ratio
        l2 = -adv * tl.minimum(tl.maximum(ratio, lower), upper)
        d1 = -adv * d_ratio
        d2 = tl.where((ratio >= lower) & (ratio <= upper), d1, 0.0)
        pg = tl.maximum(l1, l2)
        # torch.maximum splits the gradient evenly on ties; mirror it so kernel and reference agree exactly.
        d_pg = tl.where(l1 > l2, d1, tl.where(l1 < l2, d2, 0.5 * (d1 + d2)))
        is_lo = (adv < 0.0) & (ratio < lower)
        is_hi = (adv > 0.0) & (ratio > upper)
        if HAS_DUAL:
            bound = -adv * dual_c
            is_dual = (adv < 0.0) & (bound < pg)
            pg = tl.where(is_dual, bound, pg)
            d_pg = tl.where(is_dual, 0.0, d_pg)
        else:
            is_dual = tl.full([BLOCK_R, BLOCK_T], 0, tl.int1)
        if HAS_TIS:  # truncated importance weight of the behaviour (engine) policy: a constant per token
            b = tl.load(beh_ptr + rows64[:, None] * stride_beh + cols[None, :], mask=valid, other=0.0)
            w = tl.exp(tl.minimum(tl.maximum(o - b.to(tl.float32), -log_ratio_clamp), log_ratio_clamp))
            w = tl.minimum(w, tis_cap)
            pg = pg * w
            d_pg = d_pg * w
        g = d_pg

        if HAS_REF:
            r = tl.load(ref_ptr + rows64[:, None] * stride_ref + cols[None, :], mask=valid, other=0.0)
            d = x - r.to(tl.float32)
            if KL_MODE == 0:  # k1
                kl = d
                d_kl = tl.full([BLOCK_R, BLOCK_T], 1.0, tl.float32)
            elif KL_MODE == 1:  # abs
                kl = tl.abs(d)
                d_kl = tl.where(d > 0.0, 1.0, tl.where(d < 0.0, -1.0, 0.0))
            elif KL_MODE == 2:  # mse (k2)
                kl = 0.5 * d * d
                d_kl = d
            else:  # low_var_kl (k3): exp(-d) + d - 1, -d clamped to [-20, 20], value clamped to [-10, 10]
                neg = tl.minimum(tl.maximum(-d, -20.0), 20.0)
                e = tl.exp(neg)
                v = e - neg - 1.0
                kl = tl.minimum(tl.maximum(v, -10.0), 10.0)
                d_neg = tl.where(tl.abs(d) <= 20.0, -1.0, 0.0)
                d_kl = tl.where((v >= -10.0) & (v <= 10.0), (e - 1.0) * d_neg, 0.0)
            g += kl_coef * d_kl
            acc_kl += _sum(tl.where(valid, kl, 0.0), axis=1)

        g = tl.where(valid, g, 0.0)
        tl.store(graw_ptr + rows64[:, None] * T + cols[None, :], g, mask=inb)
        acc_pg += _sum(tl.where(valid, pg, 0.0), axis=1)
        acc_n += _sum(valid.to(tl.float32), axis=1)
        acc_lo += _sum((valid & is_lo).to(tl.float32), axis=1)
        acc_hi += _sum((valid & is_hi).to(tl.float32), axis=1)
        acc_dual += _sum((valid & is_dual).to(tl.float32), axis=1)
        acc_ppo += _sum(tl.where(valid, o - x, 0.0), axis=1)

    tl.store(rowstats_ptr + 0 * S + rows, acc_pg, mask=row_ok)
    tl.store(rowstats_ptr + 1 * S + rows, acc_kl, mask=row_ok)
    tl.store(rowstats_ptr + 2 * S + rows, acc_n, mask=row_ok)
    tl.store(rowstats_ptr + 3 * S + rows, acc_lo, mask=row_ok)
    tl.store(rowstats_ptr + 4 * S + rows, acc_hi, mask=row_ok)
    tl.store(rowstats_ptr + 5 * S + rows, acc_dual, mask=row_ok)
    tl.store(rowstats_ptr + 6 * S + rows, acc_ppo, mask=row_ok)


@triton.jit
def finish_kernel(
    rowstats_ptr,
    adv_ptr,
    rewards_ptr,
    count_ptr,
    const_ptr,
    normaliser_ptr,
    weights_ptr,
    loss_ptr,
    metrics_ptr,
    S,
    norm_value,
    norm_length,
    kl_coef,
    AGG_MODE: tl.constexpr,
    NORM_KIND: tl.constexpr,  # 0: local counts, 1: norm_value, 2: *normaliser_ptr
    HAS_REF: tl.constexpr,
    HAS_REWARDS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Pass 1: totals over rows, accumulated lane-wise in row order, reduced once at the end.
    v_ntok = tl.full([BLOCK], 0.0, tl.float32)
    v_nseq = tl.full([BLOCK], 0.0, tl.float32)
    v_lo = tl.full([BLOCK], 0.0, tl.float32)
    v_hi = tl.full([BLOCK], 0.0, tl.float32)
    v_dual = tl.full([BLOCK], 0.0, tl.float32)
    v_ppo = tl.full([BLOCK], 0.0, tl.float32)
    v_kl = tl.full([BLOCK], 0.0, tl.float32)
    v_adv = tl.full([BLOCK], 0.0, tl.float32)
    v_rew = tl.full([BLOCK], 0.0, tl.float32)
    v_groups = tl.full([BLOCK], 0.0, tl.float32)
    v_const = tl.full([BLOCK], 0.0, tl.float32)
    for i0 in range(0, S, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        ok = offs < S
        ntok = tl.load(rowstats_ptr + 2 * S + offs, mask=ok, other=0.0)
        v_ntok += ntok
        v_nseq += (ntok > 0.0).to(tl.float32)
        v_lo += tl.load(rowstats_ptr + 3 * S + offs, mask=ok, other=0.0)
        v_hi += tl.load(rowstats_ptr + 4 * S + offs, mask=ok, other=0.0)
        v_dual += tl.load(rowstats_ptr + 5 * S + offs, mask=ok, other=0.0)
        v_ppo += tl.load(rowstats_ptr + 6 * S + offs, mask=ok, other=0.0)
        v_kl += tl.load(rowstats_ptr + 1 * S + offs, mask=ok, other=0.0)
        v_adv += tl.load(adv_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_REWARDS:
            v_rew += tl.load(rewards_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            # Each group is counted once: every member adds 1 / group size.
            inv = tl.where(ok, 1.0 / tl.load(count_ptr + offs, mask=ok, other=1.0), 0.0)
            v_groups += inv
            v_const += inv * tl.load(const_ptr + offs, mask=ok, other=0.0)
    n_tok_local = _sum(v_ntok, axis=0)
    n_tok = tl.maximum(n_tok_local, 1.0)
    n_seq = tl.maximum(_sum(v_nseq, axis=0), 1.0)
    adv_mean = _sum(v_adv, axis=0) / S
    rew_mean = _sum(v_rew, axis=0) / S
    if NORM_KIND == 1:
        denom = norm_value
    elif NORM_KIND == 2:
        denom = tl.load(normaliser_ptr).to(tl.float32)
    elif AGG_MODE == 0:
        denom = n_tok
    else:
        denom = n_seq

    # Pass 2: per-row aggregation weights, the loss, and centred second moments.
    v_pg = tl.full([BLOCK], 0.0, tl.float32)
    v_klw = tl.full([BLOCK], 0.0, tl.float32)
    v_adv2 = tl.full([BLOCK], 0.0, tl.float32)
    v_rew2 = tl.full([BLOCK], 0.0, tl.float32)
    for i0 in range(0, S, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        ok = offs < S
        ntok = tl.load(rowstats_ptr + 2 * S + offs, mask=ok, other=0.0)
        has = (ntok > 0.0).to(tl.float32)
        if AGG_MODE == 0:
            w = has / denom
        elif AGG_MODE == 1:
            w = has / (tl.maximum(ntok, 1.0) * denom)
        elif AGG_MODE == 2:
            w = has / denom
        else:
            w = has / (norm_length * denom)
        tl.store(weights_ptr + offs, w, mask=ok)
        v_pg += w * tl.load(rowstats_ptr + 0 * S + offs, mask=ok, other=0.0)
        v_klw += w * tl.load(rowstats_ptr + 1 * S + offs, mask=ok, other=0.0)
        a = tl.load(adv_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        v_adv2 += tl.where(ok, (a - adv_mean) * (a - adv_mean), 0.0)
        if HAS_REWARDS:
            rw = tl.load(rewards_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            v_rew2 += tl.where(ok, (rw - rew_mean) * (rw - rew_mean), 0.0)
    pg_loss = _sum(v_pg, axis=0)
    loss = pg_loss
    if HAS_REF:
        loss = pg_loss + kl_coef * _sum(v_klw, axis=0)
    tl.store(loss_ptr, loss)
    tl.store(metrics_ptr + 0, pg_loss)
    tl.store(metrics_ptr + 1, _sum(v_lo, axis=0) / n_tok)
    tl.store(metrics_ptr + 2, _sum(v_hi, axis=0) / n_tok)
    tl.store(metrics_ptr + 3, _sum(v_dual, axis=0) / n_tok)
    tl.store(metrics_ptr + 4, _sum(v_ppo, axis=0) / n_tok)
    tl.store(metrics_ptr + 5, _sum(v_kl, axis=0) / n_tok)
    tl.store(metrics_ptr + 6, adv_mean)
    tl.store(metrics_ptr + 7, tl.sqrt(_sum(v_adv2, axis=0) / S))
    if HAS_REWARDS:
        tl.store(metrics_ptr + 8, rew_mean)
        tl.store(metrics_ptr + 9, tl.sqrt(_sum(v_rew2, axis=0) / S))
        tl.store(metrics_ptr + 10, _sum(v_const, axis=0) / _sum(v_groups, axis=0))


@triton.jit
def token_backward_kernel(
    graw_ptr,
    weights_ptr,
    grad_out_ptr,
    grad_ptr,
    S,
    T,
    BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < S
    rows64 = rows.to(tl.int64)
    scale = tl.load(weights_ptr + rows, mask=row_ok, other=0.0) * tl.load(grad_out_ptr).to(tl.float32)
    for t0 in range(0, T, BLOCK_T):
        cols = t0 + tl.arange(0, BLOCK_T)
        inb = row_ok[:, None] & (cols < T)[None, :]
        offs = rows64[:, None] * T + cols[None, :]
        g = tl.load(graw_ptr + offs, mask=inb, other=0.0)
        tl.store(grad_ptr + offs, g * scale[:, None], mask=inb)
