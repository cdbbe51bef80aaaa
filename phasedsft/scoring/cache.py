"""An embedded SQLite cache of scoring results, written one result at a time.

Each row is keyed by a hash of (scorer, model, prompt version, generation parameters,
example content); see :func:`cache_key`. Every ``put`` commits, in WAL mode, so a result
is durable as soon as it is recorded and a killed process loses only requests still in
flight. Several processes may share one cache file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasedsft.io import sha256_json
from phasedsft.records import Example

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    example_id TEXT NOT NULL,
    scorer TEXT NOT NULL,
    status TEXT NOT NULL,            -- 'ok' or 'failed'
    score REAL,                      -- NULL when failed: never a default score
    detail TEXT NOT NULL,            -- JSON: per-dimension scores, samples, spread, expected...
    raw TEXT,                        -- the reply text(s), kept for failures and audits
    error TEXT,
    cost_usd REAL NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)
"""


def cache_key(identity: Mapping[str, Any], ex: Example) -> str:
    """Hash of the scorer's identity (name, model, prompt version, parameters) and the content."""
    return sha256_json({"scorer": dict(identity), "example": [ex.instruction, ex.input, ex.output]})


@dataclass
class Result:
    key: str
    example_id: str
    scorer: str
    status: str
    score: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    raw: str | None = None
    error: str | None = None
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0


class ScoreCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # used by one thread at a time (the engine may run its event loop in a helper thread)
        self.db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(SCHEMA)
        self.db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, Result]:
        keys = list(keys)
        out: dict[str, Result] = {}
        for start in range(0, len(keys), 900):  # SQLite's limit on bound parameters
            chunk = keys[start : start + 900]
            rows = self.db.execute(
                "SELECT key, example_id, scorer, status, score, detail, raw, error, cost_usd, tokens_in, "
                f"tokens_out, requests FROM results WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for r in rows:
                out[r[0]] = Result(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), *r[6:])
        return out

    def put(self, r: Result) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.key,
                r.example_id,
                r.scorer,
                r.status,
                r.score,
                json.dumps(r.detail),
                r.raw,
                r.error,
                r.cost_usd,
                r.tokens_in,
                r.tokens_out,
                r.requests,
                time.time(),
            ),
        )
        self.db.commit()

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        self.db.close()


def identity_hash(identity: Mapping[str, Any]) -> str:
    return sha256_json(dict(identity))[:12]
