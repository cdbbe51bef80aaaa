"""Commands the tests run, built in one place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import run_command


def openai_score_cmd(
    root: Path, base_url: str, n: int, *extra: str, concurrency: int = 1
) -> list[str]:
    """``score.py`` with the OpenAI scorer against ``base_url`` (a local server or fault proxy)
    on ``n`` examples of the graded suite; runs under ``root/score``, cache in ``root/cache``."""
    return [
        sys.executable,
        "score.py",
        "scorer=openai",
        f"scorer.base_url={base_url}",
        "scorer.model=smollm2",
        "scorer.structured=true",
        "scorer.max_tokens=20",
        f"scorer.concurrency={concurrency}",
        f"dataset.source.n={n}",
        "dataset.eval=null",
        f"run.root={root / 'score'}",
        f"run.cache_dir={root / 'cache'}",
        *extra,
    ]


def run_score(
    cmd: list[str], env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run score.py unbuffered: never a traceback; exit code 0 unless ``check=False``."""
    env = {"PYTHONUNBUFFERED": "1", **(env or {})}
    return run_command(cmd, env=env, timeout=300, check=check, no_traceback=True)
