"""Rule-based rewards of MMR1 (Sec. 4): format (think / answer / boxed) + accuracy (math-verify, choices)."""

from mmr1_mega.reward.choice import match_choice, parse_choices
from mmr1_mega.reward.compute import RewardResult, accuracy_reward, compute_rewards, judge_answer
from mmr1_mega.reward.config import RewardConfig
from mmr1_mega.reward.format import extract_answer, find_boxed, format_reward
from mmr1_mega.reward.verify import VerifyOutcome, shutdown_worker, verify_with_time_limit

__all__ = [
    "RewardConfig",
    "RewardResult",
    "VerifyOutcome",
    "accuracy_reward",
    "compute_rewards",
    "extract_answer",
    "find_boxed",
    "format_reward",
    "judge_answer",
    "match_choice",
    "parse_choices",
    "shutdown_worker",
    "verify_with_time_limit",
]
