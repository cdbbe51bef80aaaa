"""``python -m phasedsft.scoring.server``: the old name of ``python -m phasedsft.llm.server``."""

from phasedsft.llm.server import main

if __name__ == "__main__":
    main()
