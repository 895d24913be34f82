"""Benchmark VAS scoring (vectorised self-BLEU vs NLTK) and sampler draws; prints JSON. See mmr1_mega.vas.bench."""

import sys

from mmr1_mega.vas.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
