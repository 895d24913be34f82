"""An independent fp64 GRPO loss, written sequence by sequence from the formulas (not from mmr1_mega.algo),
and a generator of random padded GRPO batches. Used by the tests of tests/algo only."""

from __future__ import annotations

import math

import torch


def fp64_advantages(rewards, group_ids, *, unbiased=True, norm_by_std=True, eps=1e-6) -> list[float]:
    """GRPO advantage per sequence from Python floats: (r - mean) / (std + eps), 0 for constant groups."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        members.setdefault(g, []).append(i)
    out = [0.0] * len(rewards)
    for idx in members.values():
        vals = [float(rewards[i]) for i in idx]
        if len(set(vals)) == 1:
            continue
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1 if unbiased else len(vals))
        for i, v in zip(idx, vals):
            out[i] = (v - mean) / (math.sqrt(var) + eps) if norm_by_std else v - mean
    return out


def fp64_kl(x: torch.Tensor, ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """KL estimators of http://joschu.net/blog/kl-approx.html with q = policy, p = reference."""
    log_p_over_q = ref - x
    if estimator == "k1":
        return -log_p_over_q
    if estimator == "abs":
        return (x - ref).abs()
    if estimator == "mse":
        return (x - ref) ** 2 / 2
    u = torch.clamp(log_p_over_q, -20, 20)
    return torch.clamp(u.exp() - 1 - u, -10, 10)


def fp64_grpo(
    logp,
    old,
    ref,
    mask,
    rewards,
    group_ids,
    *,
    clip_low=0.2,
    clip_high=0.2,
    dual_c=None,
    kl_coef=0.0,
    kl="low_var_kl",
    agg="token-mean",
    unbiased=True,
    norm_by_std=True,
    eps=1e-6,
    advantages=None,
    normaliser=None,
    norm_length=None,
    behaviour=None,
    tis_cap=None,
):
    """Returns (loss, grad wrt logp as fp64, metrics dict of Python floats)."""
    x = logp.detach().to(torch.float64).requires_grad_()
    if advantages is None:
        adv = fp64_advantages(rewards, group_ids, unbiased=unbiased, norm_by_std=norm_by_std, eps=eps)
    else:
        adv = [float(a) for a in advantages]
    seq_sums, pg_sums, counts = [], [], []
    n_low = n_high = n_dual = 0
    ppo_kl = kl_total = 0.0
    for i in range(x.shape[0]):
        keep = mask[i] != 0
        n = int(keep.sum())
        if n == 0:
            continue
        xi = x[i][keep]
        oi = old[i][keep].to(torch.float64)
        a = adv[i]
        ratio = torch.exp(torch.clamp(xi - oi, -20, 20))
        surr = torch.stack([-a * ratio, -a * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)]).max(0).values
        n_low += int(((ratio < 1 - clip_low) & (a < 0)).sum())
        n_high += int(((ratio > 1 + clip_high) & (a > 0)).sum())
        if dual_c is not None and a < 0:
            n_dual += int((surr > -a * dual_c).sum())
            surr = torch.clamp(surr, max=-a * dual_c)
        if tis_cap is not None:  # min(pi_old / pi_behaviour, cap), per token
            w = torch.exp(torch.clamp(oi - behaviour[i][keep].to(torch.float64), -20, 20))
            surr = surr * torch.clamp(w, max=tis_cap)
        tok = surr
        if ref is not None:
            k = fp64_kl(xi, ref[i][keep].to(torch.float64), kl)
            kl_total += float(k.detach().sum())
            tok = surr + kl_coef * k
        ppo_kl += float((oi - xi.detach()).sum())
        seq_sums.append(tok.sum())
        pg_sums.append(surr.sum())
        counts.append(n)
    n_tok, n_seq = sum(counts), len(counts)
    length = norm_length if norm_length is not None else logp.shape[1]

    def aggregate(sums):
        if not sums:
            return x.sum() * 0.0
        if agg == "token-mean":
            return sum(sums) / (normaliser if normaliser is not None else n_tok)
        denom = normaliser if normaliser is not None else n_seq
        if agg == "seq-mean-token-mean":
            return sum(s / c for s, c in zip(sums, counts)) / denom
        if agg == "seq-mean-token-sum":
            return sum(sums) / denom
        return sum(s / length for s in sums) / denom

    loss = aggregate(seq_sums)
    (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    grad = torch.zeros_like(x) if grad is None else grad
    tok_den = max(n_tok, 1)
    adv_mean = sum(adv) / len(adv)
    metrics = {
        "pg_loss": float(aggregate(pg_sums).detach()),
        "pg_clipfrac_low": n_low / tok_den,
        "pg_clipfrac_high": n_high / tok_den,
        "pg_clipfrac_dual": n_dual / tok_den,
        "ppo_kl": ppo_kl / tok_den,
        "kl": kl_total / tok_den,
        "advantage_mean": adv_mean,
        "advantage_std": math.sqrt(sum((a - adv_mean) ** 2 for a in adv) / len(adv)),
    }
    if rewards is not None:
        r = [float(v) for v in rewards]
        r_mean = sum(r) / len(r)
        groups: dict[int, set[float]] = {}
        for g, v in zip(group_ids.tolist(), r):
            groups.setdefault(g, set()).add(v)
        metrics["reward_mean"] = r_mean
        metrics["reward_std"] = math.sqrt(sum((v - r_mean) ** 2 for v in r) / len(r))
        metrics["zero_std_group_frac"] = sum(len(s) == 1 for s in groups.values()) / len(groups)
    return float(loss.detach()), grad, metrics


def make_batch(group_sizes, max_len, *, seed, dtype=torch.float32, empty_rows=(), reward="binary"):
    """A random GRPO batch: shuffled non-contiguous groups with arbitrary ids, right-padded responses of
    random length with a few holes, inf in the padding, log-ratios wide enough to trigger every clip."""
    gen = torch.Generator().manual_seed(seed)
    num_seqs = sum(group_sizes)
    ids = (torch.randperm(1000, generator=gen)[: len(group_sizes)] * 7 + 3).repeat_interleave(
        torch.tensor(group_sizes)
    )
    perm = torch.randperm(num_seqs, generator=gen)
    group_ids = ids[perm].to(torch.int64)
    lengths = torch.randint(1, max_len + 1, (num_seqs,), generator=gen)
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    mask &= torch.rand(num_seqs, max_len, generator=gen) > 0.1
    for i in empty_rows:
        mask[i] = False
    logp = -3.0 * torch.rand(num_seqs, max_len, generator=gen)
    old = logp + 0.6 * torch.randn(num_seqs, max_len, generator=gen)
    ref = logp + 0.5 * torch.randn(num_seqs, max_len, generator=gen)
    logp, old, ref = logp.to(dtype), old.to(dtype), ref.to(dtype)
    # Keep every ratio clear of the clip bounds the tests use, so that a 1-ulp difference between two exp
    # implementations cannot flip a clip decision (and the gradient of that token with it).
    ratio = torch.exp(logp.float() - old.float())
    near = torch.zeros_like(mask)
    for bound in (0.8, 1.2, 1.28, 2.0, 3.0):
        near |= (ratio - bound).abs() < 1e-3
    old = torch.where(near, logp, old)
    for t in (logp, old, ref):
        t[~mask] = float("inf")
    if reward == "binary":
        rewards = torch.randint(0, 2, (num_seqs,), generator=gen).to(torch.float32)
    else:
        rewards = torch.rand(num_seqs, generator=gen)
    return logp, old, ref, mask, rewards, group_ids
