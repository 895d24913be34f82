"""Rollout glue (rank 0): prompts -> engine samples -> rewards -> the actor's RolloutBatch and VAS outcomes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmr1_mega.actor.batch import RolloutBatch, build_batch
from mmr1_mega.reward import compute_rewards
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
            seed=seed + k,
        )
        for k, s in enumerate(samples)
    ]
    t0 = time.perf_counter()
    outputs = engine.generate(requests)
    t1 = time.perf_counter()
    flat = [o for per_prompt in outputs for o in per_prompt]
    texts = [o.text for o in flat]
    answers = [s["answer"] for s in samples for _ in range(n)]
    problems = [s["problem"] for s in samples for _ in range(n)]
    scored = compute_rewards(texts, answers, reward_cfg, problems)
    t2 = time.perf_counter()
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
        "response/truncated_frac": float(np.mean([f == "length" for f in rollouts.finish_reasons])),
        "time/generate": rollouts.generate_seconds,
        "time/reward": rollouts.reward_seconds,
        **{k if "/" in k else f"reward/{k}": v for k, v in rollouts.reward_metrics.items()},
    }
