"""mmr1-mega: GRPO + Variance-Aware Sampling for Qwen-VL on megatron-core (MMR1, arXiv 2509.21268)."""

__version__ = "0.1.0"

import os as _os

# Ask NVML, not the CUDA runtime, whether there is a GPU (torch reads this at each call). Without it the
# first torch.cuda.is_available() in a process creates a CUDA context, and torch then refuses CUDA in every
# rank forked from that process ("Cannot re-initialize CUDA in forked subprocess": seen on an H200, where
# `mmr1-mega demo` asked is_available() before forking its ranks). Set at import so that no entry point asks
# before it is set.
_os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
