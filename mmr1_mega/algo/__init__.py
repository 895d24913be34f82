"""Eager torch reference of the GRPO loss: advantages, KL estimators, clipped loss, aggregation, config."""

from mmr1_mega.algo.advantages import compute_advantages, reward_metrics
from mmr1_mega.algo.config import GRPOLossConfig
from mmr1_mega.algo.kl import kl_penalty
from mmr1_mega.algo.loss import grpo_loss_reference

__all__ = ["GRPOLossConfig", "compute_advantages", "grpo_loss_reference", "kl_penalty", "reward_metrics"]
