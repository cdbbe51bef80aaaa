"""``python -m phasedsft.winrate``: the old name of ``python -m phasedsft.evaluate.winrate``."""

import sys

from phasedsft.evaluate.winrate import main

if __name__ == "__main__":
    sys.exit(main())
