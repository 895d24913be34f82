"""Weight-sync benchmark: seconds and GB/s per update for each transport (see mmr1_mega/sync/bench.py)."""

import sys

from mmr1_mega.sync.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
