"""Variance-Aware Sampling (MMR1, arXiv 2509.21268, Section 3, Algorithm 1): VPS scores, mixed sampler,
refresh schedule, online update and the rank-0 broadcast."""

from mmr1_mega.vas.config import VASConfig
from mmr1_mega.vas.controller import VarianceAwareSampler
from mmr1_mega.vas.dist import DistributedVAS
from mmr1_mega.vas.outcomes import RolloutOutcomes
from mmr1_mega.vas.sampler import MixedSampler
from mmr1_mega.vas.scores import PromptScores, score_prompts
from mmr1_mega.vas.self_bleu import self_bleu

__all__ = [
    "DistributedVAS",
    "MixedSampler",
    "PromptScores",
    "RolloutOutcomes",
    "VASConfig",
    "VarianceAwareSampler",
    "score_prompts",
    "self_bleu",
]
