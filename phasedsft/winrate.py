"""``python -m phasedsft.winrate``: the deprecated old name of ``python -m phasedsft.evaluate.winrate``."""

import sys

from phasedsft.cli import old_command_name
from phasedsft.evaluate.winrate import main

if __name__ == "__main__":
    old_command_name("phasedsft.winrate", "phasedsft.evaluate.winrate")
    sys.exit(main())
