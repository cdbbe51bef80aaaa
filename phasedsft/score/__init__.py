"""Difficulty scoring (the paper's IDC step): LLM judges, local LMs and cheap baselines.

Every scorer caches each result in one SQLite file as it arrives (:mod:`.cache`), so a
crash, Ctrl-C or ``kill -9`` loses nothing already answered and a rerun asks for nothing
twice. API scorers run through :mod:`.engine`: a bounded pool of in-flight requests,
rate limits, retries, a cost estimate and a hard budget.
"""
