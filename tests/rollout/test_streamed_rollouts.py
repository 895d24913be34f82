"""Streamed rollouts with rewards scored while generation goes on (trainer/rollout.generate_and_score over
server engines): the same samples and rewards, in the same order, as generating the whole batch and scoring
it afterwards on the main thread. Servers: the SGLang stand-in of fake_sglang_server.py (its answers are
formatted \\boxed answers, so rewards vary), one of them slow."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mmr1_mega.config import RolloutConfig
from mmr1_mega.distributed.init import free_port
from mmr1_mega.reward import RewardConfig, compute_rewards
from mmr1_mega.rollout.protocol import GenerationRequest
from mmr1_mega.rollout.sglang import SGLangEngine
from mmr1_mega.rollout.sglang_server import SGLangServer
from mmr1_mega.trainer.rollout import generate_and_score

FAKE = str(Path(__file__).with_name("fake_sglang_server.py"))


def test_streamed_rollouts_score_each_group_as_it_arrives_and_equal_the_batched_path(tmp_path):
    servers = [
        SGLangServer(
            str(tmp_path / "m"),
            port=free_port(),
            launcher=[sys.executable, FAKE],
            extra_args=["--record-dir", str(tmp_path), "--boxed-answers", *extra],
            log_path=str(tmp_path / f"s{k}.log"),
        )
        for k, extra in enumerate([["--generate-delay-s", "1"], []])
    ]
    engine = SGLangEngine(servers, timeout_s=30, request_timeout_s=30).launch()
    try:
        g = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ()).item()))
        prompts = [torch.randint(8, 500, (5,), generator=g).tolist() for _ in range(6)]
        # the stand-in's sample j answers (last prompt id + 1 + j) mod 7: even prompts get one right sample
        # (j = 0), odd ones none (last + 5 is none of j = 0..3)
        dataset = [
            {
                "input_ids": ids,
                "answer": str((ids[-1] + (1 if k % 2 == 0 else 5)) % 7),
                "problem": f"problem {k}",
            }
            for k, ids in enumerate(prompts)
        ]
        cfg = RolloutConfig(n_samples=4, max_new_tokens=3, temperature=1.0)
        reward_cfg = RewardConfig(num_workers=2)
        indices = [4, 0, 5, 2, 1, 3]
        got = generate_and_score(engine, dataset, indices, 4, cfg, reward_cfg, seed=11)

        requests = [
            GenerationRequest(
                prompt_ids=dataset[i]["input_ids"], n=4, max_new_tokens=3, temperature=1.0, seed=11 + k
            )
            for k, i in enumerate(indices)
        ]
        outputs = [o for group in engine.generate(requests) for o in group]
        ref = compute_rewards(
            [o.text for o in outputs],
            [dataset[i]["answer"] for i in indices for _ in range(4)],
            reward_cfg,
            [dataset[i]["problem"] for i in indices for _ in range(4)],
        )
        assert got.prompt_indices == indices
        assert got.response_ids == [o.token_ids for o in outputs]
        assert got.rewards == ref.total and got.accuracy == ref.accuracy and got.format == ref.format
        # the rewards vary, so the check can tell orders apart: one right sample in each even prompt's group
        assert [sum(got.accuracy[4 * k : 4 * k + 4]) for k in range(6)] == [
            1.0 if i % 2 == 0 else 0.0 for i in indices
        ]
    finally:
        engine.shutdown()
