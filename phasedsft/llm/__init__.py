"""OpenAI-compatible requests, shared by scoring (step 1) and judging (step 4).

:mod:`.endpoint` (client, error classification, parse retries), :mod:`.engine` (a bounded
pool of in-flight requests, rate limits, a hard budget, per-item claims), :mod:`.cache`
(one SQLite file: every result as it arrives, so nothing answered is asked twice),
:mod:`.cost` (prices, token counts) and :mod:`.server` (a real llama.cpp server on loopback).
"""
