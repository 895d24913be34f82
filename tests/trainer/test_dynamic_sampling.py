"""Dynamic sampling (DAPO): groups whose rewards do not vary never reach the loss; more prompts are drawn to
fill the batch, as many as the share of varied groups so far says, within the round limit."""

from __future__ import annotations

import math

import pytest

from mmr1_mega.trainer.rollout import Rollouts, dynamic_sample, group_unit

N = 4


def rollouts(indices, rewards_of) -> Rollouts:
    """Rollouts of the prompts `indices`, prompt i's N rewards given by rewards_of(i) (a test input)."""
    rewards = [float(x) for i in indices for x in rewards_of(i)]
    return Rollouts(
        prompt_indices=list(indices),
        n=N,
        response_ids=[[i, j] for i in indices for j in range(N)],
        texts=[f"{i}-{j}" for i in indices for j in range(N)],
        finish_reasons=["stop"] * len(rewards),
        rewards=rewards,
        accuracy=rewards,
        format=[1.0] * len(rewards),
        reward_metrics={"reward/accuracy": sum(rewards) / len(rewards), "reward/verifier_timeouts": 1.0},
        logprobs=[[-0.5, -0.25]] * len(rewards),
        generate_seconds=1.0,
    )


def varied_if_odd(i):  # odd prompts: mixed outcomes; even prompts: all right (i % 4 == 0) or all wrong
    return [1, 0, 1, 0] if i % 2 else ([1] * N if i % 4 == 0 else [0] * N)


class Source:
    """Prompt ids 100, 101, ... drawn in order; records every draw."""

    def __init__(self):
        self.next, self.draws = 100, []

    def __call__(self, count):
        self.draws.append(count)
        out = list(range(self.next, self.next + count))
        self.next += count
        return out


def test_only_varied_groups_are_kept_and_more_are_drawn_by_the_kept_share():
    first = rollouts([0, 1, 2, 3], varied_if_odd)  # 2 of 4 vary
    source = Source()
    ds = dynamic_sample(first, 4, 1, 4, source, lambda idx, r: rollouts(idx, varied_if_odd))
    assert source.draws == [math.ceil(2 / (2 / 4))]  # 2 missing at a kept share of 1/2: 4 more prompts
    assert ds.kept.prompt_indices == [1, 3, 101, 103] and ds.rounds == 2
    assert ds.kept.varied_groups() == [0, 1, 2, 3]  # every group in the batch has a learning signal
    assert ds.generated.prompt_indices == [0, 1, 2, 3, 100, 101, 102, 103]
    m = ds.metrics()
    assert m["dynamic/zero_std_groups_in_batch"] == 0 and m["dynamic/groups_kept"] == 4
    assert m["dynamic/dropped_group_frac"] == 0.5 and m["dynamic/groups_generated"] == 8
    # the kept rows are exactly the chosen groups' rows, in order, with their engine log-probs
    assert ds.kept.texts[:N] == [f"1-{j}" for j in range(N)] and len(ds.kept.logprobs) == 4 * N
    assert ds.generated.reward_metrics["reward/verifier_timeouts"] == 2.0  # counts add, means average
    assert ds.generated.generate_seconds == 2.0


def test_nothing_varies_draws_eight_times_the_missing_then_stops_at_the_round_limit():
    source = Source()
    ds = dynamic_sample(
        rollouts([0, 2], varied_if_odd), 2, 1, 3, source, lambda idx, r: rollouts(idx, lambda i: [0] * N)
    )
    assert source.draws == [16, 16] and ds.rounds == 3
    assert ds.kept.prompt_indices == [] and ds.metrics()["dynamic/groups_kept"] == 0
    assert len(ds.generated.prompt_indices) == 2 + 16 + 16


def test_one_round_only_filters_and_the_batch_is_cut_to_whole_units():
    first = rollouts([1, 3, 5, 2], varied_if_odd)  # 3 vary
    ds = dynamic_sample(first, 4, 2, 1, Source(), None)  # no second round: generate is never called
    assert ds.kept.prompt_indices == [1, 3]  # 3 kept, cut to a multiple of 2
    ds = dynamic_sample(first, 2, 1, 4, Source(), None)  # enough in round one
    assert ds.kept.prompt_indices == [1, 3] and ds.rounds == 1


@pytest.mark.parametrize("n, divisor, unit", [(4, 2, 1), (4, 8, 2), (5, 4, 4), (8, 1, 1), (6, 4, 2)])
def test_the_unit_is_the_fewest_groups_whose_rows_split_evenly(n, divisor, unit):
    assert group_unit(n, divisor) == unit
    assert (unit * n) % divisor == 0 and all((u * n) % divisor for u in range(1, unit))


def test_concat_of_the_selected_groups_gives_back_the_rollouts():
    r = rollouts([0, 1, 2, 3], varied_if_odd)
    back = Rollouts.concat([r.select_groups([0, 1]), r.select_groups([2, 3])])
    assert back.prompt_indices == r.prompt_indices and back.rewards == r.rewards and back.texts == r.texts
    assert back.response_ids == r.response_ids and back.logprobs == r.logprobs
