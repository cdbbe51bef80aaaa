"""``python -m phasedsft.scoring.agree``: the old name of ``python -m phasedsft.score.agree``."""

import sys

from phasedsft.score.agree import main

if __name__ == "__main__":
    sys.exit(main())
