"""``python -m phasedsft.scoring.agree``: the deprecated old name of ``python -m phasedsft.score.agree``."""

import sys

from phasedsft.cli import old_command_name
from phasedsft.score.agree import main

if __name__ == "__main__":
    old_command_name("phasedsft.scoring.agree", "phasedsft.score.agree")
    sys.exit(main())
