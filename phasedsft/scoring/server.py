"""``python -m phasedsft.scoring.server``: the deprecated old name of ``python -m phasedsft.llm.server``."""

from phasedsft.cli import old_command_name
from phasedsft.llm.server import main

if __name__ == "__main__":
    old_command_name("phasedsft.scoring.server", "phasedsft.llm.server")
    main()
