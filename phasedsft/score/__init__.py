"""Step 1, score (the paper's IDC): a difficulty from 1 to 5 for every training triplet.

:mod:`.run` is ``score.py``'s job; :mod:`.base` the scorer protocol and the cheap baselines
(oracle, length); :mod:`.api` LLM judges through an OpenAI-compatible API; :mod:`.local`
local LMs (IFD, perplexity, a local judge); :mod:`.prompt` the scoring prompt and its
parser; :mod:`.report` the summary; :mod:`.agree` agreement between two scorers.
Requests, caching and budgets live in :mod:`phasedsft.llm`.
"""
