"""On-disk response cache (SQLite): one row per answered request, keyed by arm, sample id and a
hash of the exact request body. A run that stops halfway resumes from here; a re-score reads
only from here. Only successful answers are stored, so failed requests are retried next time.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    arm TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    row TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (arm, sample_id, request_hash)
)
"""


def request_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def get(self, arm: str, sample_id: str, rhash: str) -> dict | None:
        row = self._db.execute("SELECT row FROM responses WHERE arm=? AND sample_id=? AND request_hash=?",
                               (arm, sample_id, rhash)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, arm: str, sample_id: str, rhash: str, row: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO responses (arm, sample_id, request_hash, row) VALUES (?, ?, ?, ?)",
                         (arm, sample_id, rhash, json.dumps(row, ensure_ascii=False)))
        self._db.commit()

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
