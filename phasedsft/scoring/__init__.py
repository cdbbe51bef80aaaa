"""Old command names, kept working: ``python -m phasedsft.scoring.server`` and
``python -m phasedsft.scoring.agree`` (now :mod:`phasedsft.llm.server` and
:mod:`phasedsft.score.agree`)."""
