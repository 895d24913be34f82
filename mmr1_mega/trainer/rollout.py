"""Rollout glue (rank 0): prompts -> engine samples -> rewards -> the actor's RolloutBatch and VAS outcomes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from mmr1_mega.actor.batch import RolloutBatch, build_batch
from mmr1_mega.reward import RewardResult, compute_rewards
from mmr1_mega.reward.verify import set_num_workers
from mmr1_mega.rollout.protocol import GenerationRequest
from mmr1_mega.vas.outcomes import RolloutOutcomes


@dataclass
class Rollouts:
    """n samples for each of a set of prompts, scored. Flat lists are prompt-major (prompt i's samples
    are rows i*n .. i*n+n-1)."""

    prompt_indices: list[int]
    n: int
    response_ids: list[list[int]]
    texts: list[str]
    finish_reasons: list[str]
    rewards: list[float]
    accuracy: list[float]
    format: list[float]
    reward_metrics: dict[str, float]
    logprobs: list[list[float]] | None = None  # the engine's raw log-prob of each response token
    generate_seconds: float = 0.0
    reward_seconds: float = 0.0

    def outcomes(self) -> list[RolloutOutcomes]:
        """Per prompt: accuracy outcomes and response token ids (what VAS scores)."""
        n = self.n
        return [
            RolloutOutcomes(self.accuracy[i * n : (i + 1) * n], self.response_ids[i * n : (i + 1) * n])
            for i in range(len(self.prompt_indices))
        ]

    def varied_groups(self) -> list[int]:
        """The groups (prompt positions) whose rewards are not all equal: the only ones with a non-zero
        group-normalised advantage."""
        r = np.asarray(self.rewards, dtype=np.float64).reshape(-1, self.n)
        return [int(g) for g in np.flatnonzero(r.max(axis=1) > r.min(axis=1))]

    def select_groups(self, groups: Sequence[int]) -> Rollouts:
        """The rollouts of the given groups, in that order (timings and reward metrics kept)."""
        rows = [g * self.n + j for g in groups for j in range(self.n)]

        def pick(xs):
            return [xs[r] for r in rows]

        return Rollouts(
            prompt_indices=[self.prompt_indices[g] for g in groups],
            n=self.n,
            response_ids=pick(self.response_ids),
            texts=pick(self.texts),
            finish_reasons=pick(self.finish_reasons),
            rewards=pick(self.rewards),
            accuracy=pick(self.accuracy),
            format=pick(self.format),
            reward_metrics=dict(self.reward_metrics),
            logprobs=pick(self.logprobs) if self.logprobs is not None else None,
            generate_seconds=self.generate_seconds,
            reward_seconds=self.reward_seconds,
        )

    @staticmethod
    def concat(parts: Sequence[Rollouts]) -> Rollouts:
        """Several calls' rollouts as one (same n): rows appended, times added, reward metrics averaged
        over responses (the verifier's timeout / error counts added)."""
        n = parts[0].n
        if any(p.n != n for p in parts):
            raise ValueError(f"concat of rollouts with different n: {[p.n for p in parts]}")
        rows = [len(p.rewards) for p in parts]
        metrics = {}
        for key in parts[0].reward_metrics:
            values = [p.reward_metrics.get(key, 0.0) for p in parts]
            counted = "verifier_" in key  # counts, not means
            metrics[key] = (
                sum(values) if counted else sum(v * r for v, r in zip(values, rows)) / max(sum(rows), 1)
            )
        return Rollouts(
            prompt_indices=[i for p in parts for i in p.prompt_indices],
            n=n,
            response_ids=[x for p in parts for x in p.response_ids],
            texts=[x for p in parts for x in p.texts],
            finish_reasons=[x for p in parts for x in p.finish_reasons],
            rewards=[x for p in parts for x in p.rewards],
            accuracy=[x for p in parts for x in p.accuracy],
            format=[x for p in parts for x in p.format],
            reward_metrics=metrics,
            logprobs=None
            if any(p.logprobs is None for p in parts)
            else [x for p in parts for x in p.logprobs],
            generate_seconds=sum(p.generate_seconds for p in parts),
            reward_seconds=sum(p.reward_seconds for p in parts),
        )


@dataclass
class DynamicSample:
    """One step's dynamic sampling: `kept` reaches the loss; `generated` is everything generated."""

    kept: Rollouts
    generated: Rollouts
    rounds: int

    def metrics(self) -> dict[str, float]:
        generated = len(self.generated.prompt_indices)
        varied = len(self.generated.varied_groups())
        kept_rewards = np.asarray(self.kept.rewards, dtype=np.float64).reshape(-1, self.kept.n)
        return {
            "dynamic/rounds": float(self.rounds),
            "dynamic/groups_generated": float(generated),
            "dynamic/groups_kept": float(len(self.kept.prompt_indices)),
            "dynamic/dropped_group_frac": 1.0 - varied / max(generated, 1),
            # groups in the batch the loss sees whose rewards do not vary: 0 by construction
            "dynamic/zero_std_groups_in_batch": float((kept_rewards.std(axis=1) == 0).sum()),
        }


def group_unit(n: int, rows_divisor: int) -> int:
    """The fewest groups of n rows whose row count divides evenly by rows_divisor (data-parallel ranks x
    PPO mini-batches): a batch of a multiple of this many groups gives every rank and mini-batch rows."""
    return rows_divisor // math.gcd(n, rows_divisor)


def dynamic_sample(
    first: Rollouts,
    target: int,
    unit: int,
    max_rounds: int,
    draw_more: Callable[[int], Sequence[int]],
    generate: Callable[[Sequence[int], int], Rollouts],
) -> DynamicSample:
    """DAPO's dynamic sampling: keep the groups of `first` whose rewards vary, and while fewer than target
    are kept and fewer than max_rounds rounds ran, draw more prompts (draw_more(count)) and generate them
    (generate(indices, round)). Each round draws the missing count divided by the share of groups kept so
    far (at least 1/8 of the groups assumed kept), so a pool where most groups are uniform is filled in
    few rounds. The kept groups are cut to target and to a multiple of unit (groups the loss can split
    evenly); that may leave none, and then the step trains on nothing."""
    parts, kept = [first], [first.select_groups(first.varied_groups())]
    n_kept = len(kept[0].prompt_indices)
    rounds = 1
    while n_kept < target and rounds < max_rounds:
        generated = sum(len(p.prompt_indices) for p in parts)
        share = max(n_kept / generated, 1 / 8)
        more = generate(list(draw_more(math.ceil((target - n_kept) / share))), rounds)
        parts.append(more)
        kept.append(more.select_groups(more.varied_groups()))
        n_kept += len(kept[-1].prompt_indices)
        rounds += 1
    usable = min(target, n_kept) // unit * unit
    return DynamicSample(Rollouts.concat(kept).select_groups(range(usable)), Rollouts.concat(parts), rounds)


def generate_and_score(
    engine,
    dataset,
    indices: Sequence[int],
    n: int,
    rollout_cfg,
    reward_cfg,
    seed: int,
    temperature: float | None = None,
) -> Rollouts:
    """Sample n responses for each dataset[i] and score them (format + accuracy).

    seed: base seed of this call; request k uses seed + k, so a call is reproducible.
    """
    samples = [dataset[int(i)] for i in indices]
    requests = [
        GenerationRequest(
            prompt_ids=list(s["input_ids"]),
            pixel_values=s.get("pixel_values"),
            image_grid_thw=s.get("image_grid_thw"),
            images=s.get("images") or None,  # engines that process images themselves (SGLang)
            n=n,
            temperature=rollout_cfg.temperature if temperature is None else temperature,
            top_p=rollout_cfg.top_p,
            top_k=rollout_cfg.top_k,
            max_new_tokens=rollout_cfg.max_new_tokens,
            stop=list(rollout_cfg.stop),
            stop_token_ids=list(rollout_cfg.stop_token_ids),
            seed=seed + k,
        )
        for k, s in enumerate(samples)
    ]
    answers = [s["answer"] for s in samples]
    problems = [s["problem"] for s in samples]
    t0 = time.perf_counter()
    if not hasattr(engine, "generate_stream"):  # the in-process engine: one batch, scored on this thread
        outputs = engine.generate(requests)
        t1 = time.perf_counter()
        texts = [o.text for per_prompt in outputs for o in per_prompt]
        scored = compute_rewards(texts, _repeat(answers, n), reward_cfg, _repeat(problems, n))
    else:
        outputs, scored, t1 = _stream_and_score(engine, requests, answers, problems, n, reward_cfg)
    t2 = time.perf_counter()
    flat = [o for per_prompt in outputs for o in per_prompt]
    texts = [o.text for o in flat]
    return Rollouts(
        prompt_indices=[int(i) for i in indices],
        n=n,
        response_ids=[list(o.token_ids) for o in flat],
        texts=texts,
        finish_reasons=[o.finish_reason for o in flat],
        rewards=list(scored.total),
        accuracy=list(scored.accuracy),
        format=list(scored.format),
        reward_metrics=scored.metrics(),
        logprobs=[list(o.logprobs) for o in flat],
        generate_seconds=t1 - t0,
        reward_seconds=t2 - t1,
    )


def _repeat(xs: list, n: int) -> list:
    return [x for x in xs for _ in range(n)]


def _stream_and_score(engine, requests, answers, problems, n, reward_cfg):
    """Server engines: each prompt group is scored as soon as its responses arrive, by reward_cfg.num_workers
    threads (each verifying in a worker process of its own), while the other groups are still generated.
    Returns (outputs in request order, the RewardResult in the same order, when the last group arrived)."""
    set_num_workers(reward_cfg.num_workers)
    outputs: list = [None] * len(requests)
    futures: dict = {}
    with ThreadPoolExecutor(reward_cfg.num_workers, thread_name_prefix="mmr1-reward") as pool:
        for i, group in engine.generate_stream(requests):
            outputs[i] = group
            futures[i] = pool.submit(
                compute_rewards, [o.text for o in group], [answers[i]] * n, reward_cfg, [problems[i]] * n
            )
        t1 = time.perf_counter()
        scored = RewardResult.concat([futures[i].result() for i in range(len(requests))])
    return outputs, scored, t1


def rollout_batch(dataset, rollouts: Rollouts, image_token_id: int, merge: int) -> RolloutBatch:
    """The actor batch of a set of rollouts: prompt + response per sample, group id = prompt position."""
    n = rollouts.n
    samples = [dataset[i] for i in rollouts.prompt_indices]
    prompt_ids = [list(s["input_ids"]) for s in samples for _ in range(n)]
    pixels = [s.get("pixel_values") for s in samples for _ in range(n)]
    grids = [s.get("image_grid_thw") for s in samples for _ in range(n)]
    batch = build_batch(prompt_ids, rollouts.response_ids, pixels, grids, image_token_id, merge)
    batch.rewards = torch.tensor(rollouts.rewards, dtype=torch.float32)
    if rollouts.logprobs is not None:
        batch.engine_logp = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for i, (p, lp) in enumerate(zip(prompt_ids, rollouts.logprobs)):
            batch.engine_logp[i, len(p) : len(p) + len(lp)] = torch.tensor(lp, dtype=torch.float32)
    batch.group_ids = torch.arange(len(samples)).repeat_interleave(n)
    return batch


def rollout_metrics(rollouts: Rollouts) -> dict[str, float]:
    """Reward, accuracy, format, length and per-group statistics of a step's rollouts."""
    n = rollouts.n
    lengths = np.array([len(r) for r in rollouts.response_ids], dtype=np.float64)
    acc = np.array(rollouts.accuracy, dtype=np.float64).reshape(-1, n)
    rewards = np.array(rollouts.rewards, dtype=np.float64).reshape(-1, n)
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()),
        "reward/accuracy": float(acc.mean()),
        "reward/format": float(np.mean(rollouts.format)),
        "reward/zero_std_group_frac": float((rewards.std(axis=1) == 0).mean()),
        "reward/all_correct_group_frac": float((acc.min(axis=1) == 1).mean()),
        "reward/all_wrong_group_frac": float((acc.max(axis=1) == 0).mean()),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max(initial=0)),
        "rollout/response_tokens": float(lengths.sum()),  # every generated token (rollout compute)
        "response/truncated_frac": float(np.mean([f == "length" for f in rollouts.finish_reasons])),
        "time/generate": rollouts.generate_seconds,
        # server engines score groups while others generate: only the scoring left after the last arrived
        "time/reward": rollouts.reward_seconds,
        **{k if "/" in k else f"reward/{k}": v for k, v in rollouts.reward_metrics.items()},
    }
