"""bf16 vs FP8 rollout engines on one policy: greedy agreement, accuracy, train-inference mismatch (see
mmr1_mega/rollout/fp8_compare.py)."""

import sys

from mmr1_mega.rollout.fp8_compare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
