"""Benchmark the GRPO loss (eager vs torch.compile vs fused Triton); prints JSON. See mmr1_mega.ops.bench."""

import sys

from mmr1_mega.ops.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
