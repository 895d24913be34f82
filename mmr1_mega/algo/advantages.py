"""Group-normalised advantages (GRPO) and per-group reward statistics, eager torch reference.

Layout: ``rewards`` is ``[num_seqs]`` (any float dtype), ``group_ids`` is ``[num_seqs]`` int64 with arbitrary
ids: the members of a group (the rollouts of one prompt) need not be contiguous, groups need not be sorted,
sizes may differ, and a group may have a single member. Nothing here syncs with the host: groups are made
dense with a sort and a cumulative sum, and statistics are gathered with ``index_add``.
"""

from __future__ import annotations

import torch

from mmr1_mega.algo.config import GRPOLossConfig


def dense_group_index(group_ids: torch.Tensor) -> torch.Tensor:
    """Map arbitrary group ids to dense indices in ``[0, num_groups)`` without a host sync.

    Takes:
        group_ids: ``[num_seqs]`` integer tensor of arbitrary ids.
    Returns:
        ``[num_seqs]`` int64 tensor; equal ids get equal indices (ordered by id), ``num_groups <= num_seqs``.
    """
    sorted_ids, order = torch.sort(group_ids)
    starts = torch.ones_like(sorted_ids, dtype=torch.int64)
    starts[1:] = (sorted_ids[1:] != sorted_ids[:-1]).to(torch.int64)
    dense_sorted = torch.cumsum(starts, 0) - 1
    return torch.empty_like(dense_sorted).scatter_(0, order, dense_sorted)


def group_stats(
    rewards: torch.Tensor, group_ids: torch.Tensor, cfg: GRPOLossConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sequence statistics of the group each sequence belongs to, in fp32.

    Takes:
        rewards: ``[num_seqs]`` rewards; group_ids: ``[num_seqs]`` ids; cfg: chooses biased / unbiased std.
    Returns:
        ``(mean, std, count, constant)`` each ``[num_seqs]``: the group's reward mean, std (0 for a group of
        one or a group whose rewards are all equal), member count (fp32) and a bool that is True where every
        member of the group has the same reward (compared exactly, so all-equal groups get exactly zero
        advantage instead of rounding noise divided by eps).
    """
    r = rewards.to(torch.float32)
    idx = dense_group_index(group_ids)
    n = r.numel()
    count = torch.zeros(n, dtype=torch.float32, device=r.device).index_add_(0, idx, torch.ones_like(r))
    total = torch.zeros(n, dtype=torch.float32, device=r.device).index_add_(0, idx, r)
    mean = (total / count.clamp_min(1.0))[idx]
    # Two-pass variance: centring first keeps it accurate for rewards far from zero.
    sq = torch.zeros(n, dtype=torch.float32, device=r.device).index_add_(0, idx, (r - mean) ** 2)[idx]
    cnt = count[idx]
    denom = (cnt - 1.0) if cfg.std_unbiased else cnt
    hi = torch.full((n,), -torch.inf, device=r.device).scatter_reduce_(0, idx, r, "amax")[idx]
    lo = torch.full((n,), torch.inf, device=r.device).scatter_reduce_(0, idx, r, "amin")[idx]
    constant = hi == lo
    std = torch.where(constant, torch.zeros_like(sq), torch.sqrt(sq / denom.clamp_min(1.0)))
    return mean, std, cnt, constant


def compute_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: GRPOLossConfig) -> torch.Tensor:
    """GRPO advantage per sequence: ``(r - mean_group) / (std_group + eps)`` (DeepSeekMath Sec. 4.1.2).

    With ``cfg.norm_adv_by_std=False`` only the centring ``r - mean_group`` is kept (Dr. GRPO). A group whose
    rewards are all equal (including a group of one) gets exactly zero advantage.

    Call this once per batch, before splitting into micro-batches, and pass the result to ``grpo_loss`` as
    ``advantages=``: a micro-batch may hold only part of a group.

    Takes:
        rewards: ``[num_seqs]`` float; group_ids: ``[num_seqs]`` integer ids; cfg: the loss config.
    Returns:
        ``[num_seqs]`` fp32 advantages on the rewards' device.
    Raises:
        ValueError: if the shapes disagree or are not 1-D.
    """
    check_group_inputs(rewards, group_ids)
    mean, std, _, constant = group_stats(rewards, group_ids, cfg)
    centred = torch.where(constant, torch.zeros_like(mean), rewards.to(torch.float32) - mean)
    if cfg.norm_adv_by_std:
        return centred / (std + cfg.adv_eps)
    return centred


def reward_metrics(
    rewards: torch.Tensor, group_ids: torch.Tensor, cfg: GRPOLossConfig
) -> dict[str, torch.Tensor]:
    """Batch-level reward statistics as 0-dim device tensors (no host sync).

    Takes:
        rewards: ``[num_seqs]``; group_ids: ``[num_seqs]``; cfg: the loss config.
    Returns:
        ``reward_mean``, ``reward_std`` (population std over sequences) and ``zero_std_group_frac``: the share
        of groups whose rewards are all equal (groups of one included), i.e. the groups that give GRPO no
        learning signal, which is what Variance-Aware Sampling (MMR1 Sec. 3.2) tries to reduce.
    """
    check_group_inputs(rewards, group_ids)
    r = rewards.to(torch.float32)
    _, _, count, constant = group_stats(rewards, group_ids, cfg)
    # Each group is counted once by weighting each member with 1 / group size.
    inv = 1.0 / count
    frac = (inv * constant.to(torch.float32)).sum() / inv.sum()
    return {
        "reward_mean": r.mean(),
        "reward_std": r.std(correction=0),
        "zero_std_group_frac": frac,
    }


def check_group_inputs(rewards: torch.Tensor, group_ids: torch.Tensor) -> None:
    """Raise a one-line ValueError unless rewards and group_ids are matching non-empty 1-D tensors."""
    if rewards.dim() != 1 or group_ids.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must both be [num_seqs]"
        )
    if rewards.numel() == 0:
        raise ValueError("rewards is empty; a GRPO batch needs at least one sequence")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids has dtype {group_ids.dtype}; pass integer ids (torch.int64)")
