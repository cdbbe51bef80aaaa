"""Step 4, evaluate: generate answers on instruction test sets, judge pairs, report win rates.

:mod:`.run` is ``evaluate.py``'s job; :mod:`.sets` the test sets; :mod:`.runs` the finished
training runs and their checkpoints; :mod:`.answers` the answers files; :mod:`.generation`
the local generators (and a process per checkpoint); :mod:`.completions` answers from an
OpenAI-compatible server; :mod:`.servers` the processes and servers it starts;
:mod:`.judges` pairwise judges; :mod:`.folding` folding both orders into win / tie / lose
and the win rate; :mod:`.winrate` the replay command (``python -m
phasedsft.evaluate.winrate``); :mod:`.formats` other tools' judgment files;
:mod:`.comparison` the comparison type; :mod:`.report` tables and figures; :mod:`.seeds`
across training seeds. It reads run directories from disk (:mod:`phasedsft.rundir`) and
imports no training code.
"""
