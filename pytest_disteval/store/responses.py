"""The response store of a dp-sharded job: each request's answer, stored as computed.

Shard workers write it (worker/sharding.py's ShardLM), the scoring worker reads
it (ReplayLM), and a Ray actor's copy streams its rows back (executors/ray_actor.py).
Standard library only: the actor and the pytest process import it without lm-eval.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# rows are (model key, kind, request hash, response as its JSON text); the first
# stored answer of a key wins
RESPONSES_DDL = ("CREATE TABLE IF NOT EXISTS responses (model_key TEXT NOT NULL, "
                 "kind TEXT NOT NULL, request_hash TEXT NOT NULL, response TEXT NOT NULL, "
                 "PRIMARY KEY (model_key, kind, request_hash))")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars some backends return
        return value.item()
    raise TypeError(f"a response of type {type(value).__name__} cannot be stored as JSON")


def _decode(text: str) -> Any:
    value = json.loads(text)
    # lm-eval's LM contract uses tuples ((logprob, is_greedy)); JSON has only lists
    return tuple(value) if isinstance(value, list) else value


class ResponseStore:
    """Responses per (model key, kind, request hash) in one sqlite file (WAL mode).

    Several shard processes write one store at once: each write is a short
    ``BEGIN IMMEDIATE`` transaction of at most ``batch_size`` rows and waiters retry
    for up to ``timeout_s``. The first stored answer of a key wins (``INSERT OR
    IGNORE``), so a replay always sees one answer per request. WAL needs a local
    file system (not NFS).
    """

    def __init__(self, path: Path, *, batch_size: int = 256, timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: transactions are the explicit BEGIN/COMMIT below
        # timeout: sqlite's busy timeout, how long a writer waits for another's commit
        self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
        deadline = time.monotonic() + timeout_s
        while True:
            # switching to WAL takes a lock the busy handler does not always wait for
            # when two processes create the store at the same instant: retry
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute(RESPONSES_DDL)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # WAL + NORMAL: a killed process loses nothing committed (power loss may)
        self._db.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_many(self, model_key: str, kind: str, hashes: Iterable[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, Any] = {}
        step = 500  # below sqlite's limit on bound variables in every version
        for start in range(0, len(wanted), step):
            part = wanted[start:start + step]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(
                "SELECT request_hash, response FROM responses WHERE model_key = ? AND kind = ? "
                f"AND request_hash IN ({marks})", (model_key, kind, *part))
            for request_hash, text in rows:
                found[request_hash] = _decode(text)
        return found

    def put_many(self, model_key: str, kind: str, items: Iterable[tuple[str, Any]]) -> int:
        """Store ``(hash, response)`` pairs, committing every ``batch_size``; returns rows added."""
        added = 0
        batch: list[tuple[str, str, str, str]] = []
        for request_hash, response in items:
            batch.append((model_key, kind, request_hash,
                          json.dumps(response, default=_jsonable)))
            if len(batch) >= self.batch_size:
                added += self._write(batch)
                batch = []
        if batch:
            added += self._write(batch)
        return added

    def _write(self, rows: list[tuple[str, str, str, str]]) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO responses (model_key, kind, request_hash, response) "
                "VALUES (?, ?, ?, ?)", rows)
            added = self._db.total_changes - before
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return added

    def counts(self, model_key: str) -> dict[str, int]:
        """Stored responses per kind for one model."""
        rows = self._db.execute(
            "SELECT kind, COUNT(*) FROM responses WHERE model_key = ? GROUP BY kind", (model_key,))
        return {kind: int(n) for kind, n in rows}
