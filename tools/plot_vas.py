"""Plot VPS dynamics (MMR1 Figure 3) from saved VAS states. See mmr1_mega.vas.plot."""

import sys

from mmr1_mega.vas.plot import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
