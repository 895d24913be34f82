"""Random padded GRPO batches for the kernel tests (the same recipe as tests/algo, kept local to the room)."""

import torch


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
