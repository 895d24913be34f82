"""Refresh schedule and chunked re-scoring of the pool (MMR1 Algorithm 1: every T_update steps)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.outcomes import RolloutOutcomes
from mmr1_mega.vas.scores import PromptScores, score_prompts

ScoreFn = Callable[[list[int]], Sequence[RolloutOutcomes]]


def refresh_due(step: int, last_refresh_step: int | None, every_steps: int) -> bool:
    """True before the first step (no refresh yet) and once every_steps steps have passed since the last one."""
    return last_refresh_step is None or step - last_refresh_step >= every_steps


def select_stalest(last_scored_step: np.ndarray, share: float) -> np.ndarray:
    """The ceil(share * pool) prompts scored longest ago (never scored first; ties by index), ascending index.

    Takes:
        last_scored_step: int64 [pool], -1 for never scored.
        share: in (0, 1].
    Returns:
        int64 [K] sorted prompt indices.
    """
    n = last_scored_step.size
    k = min(n, max(1, math.ceil(round(share * n, 9))))
    if k == n:
        return np.arange(n, dtype=np.int64)
    order = np.argsort(last_scored_step, kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def rescore(
    indices: np.ndarray, score_fn: ScoreFn, cfg: VASConfig, progress: bool | None = None
) -> PromptScores:
    """Score prompts from fresh rollouts, cfg.chunk_prompts prompts per call of score_fn.

    Takes:
        indices: int64 [K] prompts to score.
        score_fn: prompt indices -> one RolloutOutcomes per index, in order (the trainer wraps its rollout
            engine, generating cfg.n_rollouts responses per prompt).
        cfg: VASConfig.
        progress: show a rich progress bar on stderr when it is a terminal (default cfg.progress).
    Returns:
        PromptScores aligned with indices.
    Raises:
        ValueError: if score_fn returns a wrong number of outcomes or a wrong type.
    """
    # A live bar only makes sense on a terminal; in batch logs (slurm) it would print empty lines.
    show = (cfg.progress if progress is None else progress) and Console(stderr=True).is_terminal
    parts: list[PromptScores] = []
    columns = (
        TextColumn("VAS refresh"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("prompts"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not show, transient=True) as bar:
        task = bar.add_task("refresh", total=int(indices.size))
        for s in range(0, indices.size, cfg.chunk_prompts):
            chunk = indices[s : s + cfg.chunk_prompts].tolist()
            outcomes = list(score_fn(chunk))
            if len(outcomes) != len(chunk):
                raise ValueError(
                    f"the VAS scoring callable returned {len(outcomes)} outcomes for {len(chunk)} prompts: "
                    "it must return one RolloutOutcomes per prompt index, in order"
                )
            for o in outcomes:
                if not isinstance(o, RolloutOutcomes):
                    raise ValueError(
                        f"the VAS scoring callable returned a {type(o).__name__}: wrap each prompt's results in "
                        "mmr1_mega.vas.RolloutOutcomes(accuracies, response_ids)"
                    )
            parts.append(score_prompts(outcomes, cfg))
            bar.advance(task, len(chunk))
    return PromptScores.concat(parts)
