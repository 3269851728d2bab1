"""The run-time models' records and the run-time model aliases, in the state actor's SQLite
database (beside the API keys): what brings them back after a restart of the state actor, of the
ingress, or of the cluster."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path

from contract.lifecycle import RuntimeModel

logger = logging.getLogger("ray.serve")

_SCHEMA = "CREATE TABLE IF NOT EXISTS runtime_models (model TEXT PRIMARY KEY, record TEXT NOT NULL)"
_ALIASES = "CREATE TABLE IF NOT EXISTS model_aliases (alias TEXT PRIMARY KEY, target TEXT NOT NULL)"


class RuntimeModelStore:
    """Records by model id, kept in memory and written through to SQLite. Thread-safe: the
    actor's methods and its reconciler thread share it. A change bumps `version`, which the
    ingress replicas' syncs compare.

    No connection stays open between writes (loads and unloads are rare), so the file is only
    held while it is written. On a read-only file system the records it has are read, and
    changes are kept in memory only (logged): serving goes on, but they will not survive a
    restart.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        # Not 1: the ingress replicas compare versions for equality, and a restarted actor counting
        # from 1 again would, on reaching the number a replica last saw, leave it with stale records.
        self.version = time.time_ns()
        try:
            with self._connect() as db:
                db.execute(_SCHEMA)
                db.execute(_ALIASES)
                rows = db.execute("SELECT model, record FROM runtime_models").fetchall()
                aliases = db.execute("SELECT alias, target FROM model_aliases").fetchall()
            self.read_only = False
        except (OSError, sqlite3.OperationalError) as exc:
            logger.warning("run-time model store %s is not writable (%s): loads are kept in memory only", path, exc)
            self.read_only = True
            rows, aliases = self._read_only_rows("SELECT model, record FROM runtime_models"), self._read_only_rows(
                "SELECT alias, target FROM model_aliases")
        self._records = {model: RuntimeModel.model_validate_json(text) for model, text in rows}
        self._aliases: dict[str, str] = dict(aliases)

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(str(self.path), timeout=10, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return contextlib.closing(db)

    def _read_only_rows(self, query: str) -> list[tuple[str, str]]:
        if not self.path.exists():
            return []
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True)) as db:
                return db.execute(query).fetchall()
        except sqlite3.Error:
            return []

    def _write(self, sql: str, params: tuple) -> None:
        if self.read_only:
            return
        try:
            with self._connect() as db:
                db.execute(sql, params)
        except (OSError, sqlite3.Error) as exc:
            logger.error("run-time model store %s: a change was not saved (%s); it will not survive a restart",
                         self.path, exc)

    def all(self) -> list[RuntimeModel]:
        with self._lock:
            return [record.model_copy() for record in self._records.values()]

    def get(self, model: str) -> RuntimeModel | None:
        with self._lock:
            record = self._records.get(model)
            return record.model_copy() if record else None

    def put(self, record: RuntimeModel) -> None:
        with self._lock:
            self._write("INSERT OR REPLACE INTO runtime_models (model, record) VALUES (?, ?)",
                        (record.model, record.model_dump_json()))
            self._records[record.model] = record.model_copy()
            self.version += 1

    def delete(self, model: str) -> None:
        with self._lock:
            self._write("DELETE FROM runtime_models WHERE model = ?", (model,))
            if self._records.pop(model, None) is not None:
                self.version += 1

    def aliases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._aliases)

    def set_alias(self, alias: str, target: str) -> None:
        """Point `alias` at `target`, in the same versioned snapshot as the records: a replica that
        sees a model unloading sees every alias that was moved off it before."""
        with self._lock:
            self._write("INSERT OR REPLACE INTO model_aliases (alias, target) VALUES (?, ?)", (alias, target))
            self._aliases[alias] = target
            self.version += 1

    def delete_alias(self, alias: str) -> bool:
        with self._lock:
            self._write("DELETE FROM model_aliases WHERE alias = ?", (alias,))
            if self._aliases.pop(alias, None) is None:
                return False
            self.version += 1
            return True

    def touch(self, used: dict[str, float]) -> None:
        """Last-used times the ingress replicas saw: in memory only (an LRU order lost with a
        restart is harmless), and no version bump (they do not change what anyone serves)."""
        with self._lock:
            for model, at in used.items():
                record = self._records.get(model)
                if record is not None and at > record.last_used:
                    record.last_used = at
