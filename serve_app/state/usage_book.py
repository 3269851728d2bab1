"""Usage per (key, model, UTC day): requests, prompt and completion tokens, errors and cache
hits, in the state actor's SQLite database (keys.db, table usage_daily), for GET /admin/usage
and `hfserve usage`. Ingress replicas gather it and flush it here every second."""

from __future__ import annotations

import contextlib
import datetime
import logging
import sqlite3
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from .keys import KeyStoreWriteError

logger = logging.getLogger("ray.serve")

GroupBy = Literal["key", "team", "model", "day"]
COUNTS = ("requests", "prompt_tokens", "completion_tokens", "errors", "cache_hits")
_COLUMN = {"key": "u.key_id", "team": "k.team_id", "model": "u.model", "day": "u.day"}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS usage_daily (key_id TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL, "
    "requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
    "errors INTEGER NOT NULL, cache_hits INTEGER NOT NULL, PRIMARY KEY (key_id, model, day))",
    "CREATE INDEX IF NOT EXISTS usage_daily_day ON usage_daily (day)",
)


class DailyUsage(BaseModel):
    key_id: str
    model: str
    day: str  # YYYY-MM-DD, UTC
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cache_hits: int = 0


def utc_day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).date().isoformat()


class UsageBook:
    """Adds replicas' batches and answers reports; a connection per call, as the run-time model
    store (the file is shared with the key store, which keeps its own)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with self._connect() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
        except (OSError, sqlite3.Error) as exc:  # a read-only volume: reports answer empty, batches wait
            logger.warning("usage store %s is not writable (%s): usage is kept by the replicas", path, exc)

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
        db = sqlite3.connect(str(self.path), timeout=10, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return contextlib.closing(db)

    def add(self, rows: list[DailyUsage]) -> None:
        updates = ", ".join(f"{name} = {name} + excluded.{name}" for name in COUNTS)
        try:
            self._add(rows, updates)
        except sqlite3.Error as exc:  # the replica keeps the batch for its next flush
            raise KeyStoreWriteError(exc) from None

    def _add(self, rows: list[DailyUsage], updates: str) -> None:
        with self._connect() as db:
            db.execute("BEGIN")  # one transaction per batch, not one per row
            db.executemany(
                f"INSERT INTO usage_daily (key_id, model, day, {', '.join(COUNTS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (key_id, model, day) DO UPDATE SET {updates}",
                [(r.key_id, r.model, r.day, *(getattr(r, name) for name in COUNTS)) for r in rows])
            db.execute("COMMIT")

    def report(self, group_by: GroupBy, *, key_id: str | None = None, model: str | None = None,
               start: str | None = None, end: str | None = None, team_id: str | None = None) -> list[dict]:
        """Sums per `group_by`, over the days from `start` to `end` (inclusive, YYYY-MM-DD). A
        key's usage counts for the team the key is in now (null: in none)."""
        where, params = [], []
        for column, value in (("u.key_id", key_id), ("u.model", model), ("k.team_id", team_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if start is not None:
            where.append("u.day >= ?")
            params.append(start)
        if end is not None:
            where.append("u.day <= ?")
            params.append(end)
        column = _COLUMN[group_by]
        sums = ", ".join(f"SUM(u.{name})" for name in COUNTS)
        join = "LEFT JOIN api_keys AS k ON k.id = u.key_id" if team_id is not None or group_by == "team" else ""
        sql = (f"SELECT {column}, {sums} FROM usage_daily AS u {join} "
               f"{'WHERE ' + ' AND '.join(where) if where else ''} GROUP BY {column} ORDER BY {column}")
        try:
            with self._connect() as db:
                rows = db.execute(sql, params).fetchall()
        except sqlite3.OperationalError:  # no table: a read-only store from before usage was kept
            return []
        return [{group_by: row[0], **dict(zip(COUNTS, row[1:], strict=True))} for row in rows]
