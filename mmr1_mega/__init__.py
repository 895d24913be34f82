"""mmr1-mega: GRPO + Variance-Aware Sampling for Qwen-VL on megatron-core (MMR1, arXiv 2509.21268)."""

__version__ = "0.1.0"
