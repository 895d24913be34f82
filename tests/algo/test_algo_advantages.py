"""Group-normalised advantages and reward statistics of the eager reference (mmr1_mega.algo.advantages)."""

import pytest
import torch

from mmr1_mega.algo import GRPOLossConfig, compute_advantages, reward_metrics
from mmr1_mega.algo.advantages import dense_group_index
from tests.algo.algo_fp64_reference import fp64_advantages
from tests.tolerances import fp32_advantage_bound


def _shuffled_groups(sizes, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = (torch.randperm(500, generator=gen)[: len(sizes)] * 11 + 5).repeat_interleave(torch.tensor(sizes))
    perm = torch.randperm(len(ids), generator=gen)
    return ids[perm], torch.rand(len(ids), generator=gen)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_advantages_match_fp64_per_group_formula_for_shuffled_uneven_groups(unbiased, norm_by_std):
    group_ids, rewards = _shuffled_groups([5, 1, 8, 3, 2, 7], seed=int(torch.randint(0, 10**6, ())))
    cfg = GRPOLossConfig(std_unbiased=unbiased, norm_adv_by_std=norm_by_std)
    got = compute_advantages(rewards, group_ids, cfg)
    want = torch.tensor(fp64_advantages(rewards, group_ids, unbiased=unbiased, norm_by_std=norm_by_std))
    diff = (got.double() - want).abs()
    bound = fp32_advantage_bound(rewards, group_ids, want, unbiased, norm_by_std)
    assert (diff <= bound).all(), f"max excess {(diff - bound).max().item():.3g}"


def test_advantages_are_exactly_zero_for_single_member_and_all_equal_groups():
    group_ids = torch.tensor([4, 9, 9, 9, 2, 2])
    rewards = torch.tensor([0.7, 0.1, 0.1, 0.1, 1.0, 0.0])
    adv = compute_advantages(rewards, group_ids, GRPOLossConfig())
    assert torch.isfinite(adv).all()
    assert adv[:4].eq(0).all()
    assert adv[4] > 0 and adv[5] < 0


def test_advantages_do_not_depend_on_the_order_of_sequences():
    group_ids, rewards = _shuffled_groups([4, 4, 2, 6], seed=int(torch.randint(0, 10**6, ())))
    perm = torch.randperm(len(rewards))
    cfg = GRPOLossConfig()
    torch.testing.assert_close(
        compute_advantages(rewards, group_ids, cfg)[perm],
        compute_advantages(rewards[perm], group_ids[perm], cfg),
    )


def test_dense_group_index_maps_equal_ids_to_equal_dense_indices():
    group_ids = torch.tensor([900, -3, 900, 17, -3, 5])
    dense = dense_group_index(group_ids)
    assert dense.tolist() == [3, 0, 3, 2, 0, 1]


def test_reward_metrics_count_each_constant_group_once():
    group_ids = torch.tensor([1, 1, 1, 1, 2, 2, 3, 8, 8])
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.0, 0.0])
    m = reward_metrics(rewards, group_ids, GRPOLossConfig())
    assert m["zero_std_group_frac"].item() == pytest.approx(3 / 4)
    assert m["reward_mean"].item() == pytest.approx(rewards.mean().item())
    assert m["reward_std"].item() == pytest.approx(rewards.double().std(correction=0).item(), rel=1e-6)


def test_mismatched_rewards_and_group_ids_are_rejected_with_the_layout():
    with pytest.raises(ValueError, match=r"\[num_seqs\]"):
        compute_advantages(torch.rand(4), torch.arange(5), GRPOLossConfig())
    with pytest.raises(ValueError, match="integer ids"):
        compute_advantages(torch.rand(4), torch.rand(4), GRPOLossConfig())
