"""Step 4, evaluate: generate answers on instruction test sets, judge pairs, report win rates.

:mod:`.run` is ``evaluate.py``'s job; :mod:`.sets` the test sets; :mod:`.generation`
answers from every stage's weights; :mod:`.judges` pairwise judges; :mod:`.winrate`
folding both orders into win / tie / lose (also ``python -m phasedsft.evaluate.winrate``);
:mod:`.report` tables and figures. It reads run directories from disk and imports no
training code.
"""
