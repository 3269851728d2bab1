"""API keys: generation, hashing, the SQLite key store, and per-key model access.

A key is ``hf_`` plus 32 random bytes (urlsafe base64). Only its SHA-256 is stored; lookups
hash the presented key and compare digests in constant time. Keys live in SQLite under the
state directory, so they survive restarts of the state actor and of the cluster, and the CLI
can manage them while the server runs (SQLite in WAL mode lets both write).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from contract.config import MODEL_ID_PATTERN, valid_model_id
from contract.errors import ConflictError, ServiceUnavailableError
from contract.schema_rules import integer
from serve_app.state.budgets import PERIOD_PATTERN, check_period

KEY_PREFIX = "hf_"
MAX_KEY_LENGTH = 128
_KEY_BODY = re.compile(r"[A-Za-z0-9_-]{16,120}")
# Anchored for JSON Schema (the OpenAPI document), matched whole with fullmatch here: Python's
# `$` would also accept a trailing newline that the schema refuses.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,63}$"
_NAME = re.compile(NAME_PATTERN.strip("^$"))
ADMIN_KEY_FILE = "admin.key"
MAX_METADATA_BYTES = 4096  # a key's free-form metadata, as compact JSON


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def well_formed(key: str) -> bool:
    """Shape check before any lookup: prefix, length, urlsafe characters."""
    return len(key) <= MAX_KEY_LENGTH and key.startswith(KEY_PREFIX) and bool(_KEY_BODY.fullmatch(key[len(KEY_PREFIX) :]))


def digests_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class KeyUsage(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_used_at: float | None = None


class KeyRecord(BaseModel):
    """A key without its secret: what the admin API and the CLI show."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    allowed_models: list[str] | None = None  # None: every model
    rpm: int | None = None  # None: the server default
    tpm: int | None = None
    budget_tokens: int | None = None  # None: no budget
    budget_period: str | None = None
    admin: bool = False
    metadata: dict[str, Any] = {}
    team_id: str | None = None  # serve_app/state/teams.py
    usage: KeyUsage = Field(default_factory=KeyUsage)

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


def _safe_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError("name must be 1-64 characters: letters, digits, space and . _ @ : -")
    return value


def _model_ids(value: list[str] | None) -> list[str] | None:
    if value is not None:
        bad = [m for m in value if not valid_model_id(m)]
        if bad:
            raise ValueError(f"not a valid model id: {bad[0]!r}")
    return value


def _small_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and (size := len(dump_json(value).encode())) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON; at most {MAX_METADATA_BYTES}")
    return value


def dump_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# The fields NewKey and KeyUpdate share, with their checks.
SafeName = Annotated[str, AfterValidator(_safe_name), Field(json_schema_extra={"pattern": NAME_PATTERN, "minLength": 1,
                                                                                "maxLength": 64})]
ModelIds = Annotated[list[Annotated[str, Field(json_schema_extra={"pattern": MODEL_ID_PATTERN})]], AfterValidator(_model_ids)]
Metadata = Annotated[dict[str, Any], AfterValidator(_small_metadata)]
BudgetTokens = Annotated[integer(ge=1, le=10**13), Field(description="Tokens the key may spend per budget_period.")]
BudgetPeriod = Annotated[str, AfterValidator(check_period), Field(
    json_schema_extra={"pattern": PERIOD_PATTERN},
    description="day, week or month (UTC calendar), or a duration such as 12h or 30d; default month.")]


class NewKey(BaseModel):
    """What POST /admin/keys and `hfserve keys create` accept."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: SafeName = Field(..., description="Letters, digits, space and . _ @ : - (1-64 characters).")
    models: ModelIds | None = Field(None, min_length=1, max_length=256, description="Allowed model ids; omit for all.")
    rpm: integer(ge=1, le=10_000_000) | None = Field(None, description="Requests per minute; omit for the default.")
    tpm: integer(ge=1, le=10_000_000_000) | None = Field(None, description="Tokens per minute; omit for the default.")
    admin: bool = Field(False, description="May use /admin, /status and /metrics.")
    expires_in_s: integer(ge=60, le=10 * 365 * 86400) | None = Field(None, description="Lifetime in seconds.")
    budget_tokens: BudgetTokens | None = None
    budget_period: BudgetPeriod | None = None
    metadata: Metadata | None = Field(None, description=f"Free-form JSON object, at most {MAX_METADATA_BYTES} bytes.")


class KeyUpdate(BaseModel):
    """What PATCH /admin/keys/{id} and `hfserve keys update` accept: the fields given change and
    the rest stay, the secret included. null puts models, rpm, tpm and the expiry back to every
    model, the server's limits and never; metadata is replaced whole. Whether a key is an admin
    key cannot change: create another."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"minProperties": 1})

    name: SafeName = Field(None, description="Letters, digits, space and . _ @ : - (1-64 characters).")  # type: ignore[assignment]
    models: ModelIds | None = Field(None, min_length=1, max_length=256, description="Allowed model ids; null for all.")
    rpm: integer(ge=1, le=10_000_000) | None = Field(None, description="Requests per minute; null for the default.")
    tpm: integer(ge=1, le=10_000_000_000) | None = Field(None, description="Tokens per minute; null for the default.")
    expires_in_s: integer(ge=60, le=10 * 365 * 86400) | None = Field(
        None, description="Lifetime from now, in seconds; null for none.")
    budget_tokens: BudgetTokens | None = None  # null: no budget
    budget_period: BudgetPeriod = None  # type: ignore[assignment]
    metadata: Metadata = Field(None, description=f"Free-form JSON object, at most {MAX_METADATA_BYTES} bytes; "  # type: ignore[assignment]
                               "replaces the key's.")

    @model_validator(mode="after")
    def _changes_something(self) -> KeyUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, models, rpm, tpm, expires_in_s, budget_tokens, budget_period "
                             "and metadata")
        return self


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    allowed_models TEXT,
    rpm INTEGER,
    tpm INTEGER,
    admin INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    last_used_at REAL,
    metadata TEXT,
    budget_tokens INTEGER,
    budget_period TEXT
)
"""
# Tokens spent of each key's budget per period (serve_app/state/budgets.py), kept with the keys.
_BUDGET_SPEND = """
CREATE TABLE IF NOT EXISTS budget_spend (
    key_id TEXT NOT NULL,
    period_start REAL NOT NULL,
    spent INTEGER NOT NULL,
    PRIMARY KEY (key_id, period_start)
)
"""
# Columns added after the first release: added to an older store when it is opened.
_ADDED_COLUMNS = {"metadata": "TEXT", "budget_tokens": "INTEGER", "budget_period": "TEXT", "team_id": "TEXT"}
_COLUMNS = (
    "id, key_sha256, name, created_at, expires_at, revoked_at, allowed_models, rpm, tpm, admin, "
    "requests, prompt_tokens, completion_tokens, last_used_at, metadata, budget_tokens, budget_period, team_id"
)


def _record(row: tuple) -> tuple[KeyRecord, str]:
    (key_id, digest, name, created, expires, revoked, models, rpm, tpm, admin, requests, prompt, completion, last,
     metadata, budget_tokens, budget_period, team_id) = row
    record = KeyRecord(
        id=key_id, name=name, created_at=created, expires_at=expires, revoked_at=revoked,
        allowed_models=json.loads(models) if models is not None else None, rpm=rpm, tpm=tpm, admin=bool(admin),
        metadata=json.loads(metadata) if metadata else {}, budget_tokens=budget_tokens, budget_period=budget_period,
        team_id=team_id, usage=KeyUsage(requests=requests, prompt_tokens=prompt, completion_tokens=completion, last_used_at=last),
    )
    return record, digest


class KeyStoreWriteError(ServiceUnavailableError):
    """The key store cannot be written (disk full, read-only file system): key writes get a 503
    saying so, while lookups, and so serving, go on."""

    def __init__(self, cause: sqlite3.Error):
        super().__init__(f"The key store cannot be written ({cause}); try again once the disk has room "
                         f"or is writable.", code="key_store_unavailable", retry_after_s=30)


class LastAdminKeyError(ConflictError):
    def __init__(self, key_id: str):
        super().__init__(f"API key '{key_id}' is the last active admin key; create another admin key before revoking it.",
                         param="key_id", code="last_admin_key")


class KeyStore:
    """The SQLite key store (WAL mode, so the CLI can write while the server runs).

    On a read-only file system (a read-only volume, or a disk the kernel remounted read-only)
    it opens the existing database read-only: lookups, and so serving, go on, and every write
    is a KeyStoreWriteError, as on a full disk.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = self._open_writable(path)
            self.read_only = False
        except OSError as exc:
            if exc.errno != errno.EROFS or not path.exists():
                raise
            # immutable: SQLite needs no -shm/-wal files (it could not create them here).
            self._db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            self.read_only = True

    @staticmethod
    def _open_writable(path: Path) -> sqlite3.Connection:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        # Create the file private before SQLite opens it: SQLite gives its -wal and -shm
        # files the database file's permissions.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
        db = sqlite3.connect(str(path), check_same_thread=False, timeout=10, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_SCHEMA)
        db.execute(_BUDGET_SPEND)
        present = {row[1] for row in db.execute("PRAGMA table_info(api_keys)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                db.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {kind}")
        return db

    def create(self, new: NewKey, now: float | None = None) -> tuple[str, KeyRecord]:
        """Returns the key (shown once, never stored) and its record."""
        now = time.time() if now is None else now
        key, key_id = generate_key(), "key_" + secrets.token_hex(8)
        expires = now + new.expires_in_s if new.expires_in_s else None
        models = json.dumps(new.models) if new.models is not None else None
        period = new.budget_period or ("month" if new.budget_tokens else None)
        self._write(
            "INSERT INTO api_keys (id, key_sha256, name, created_at, expires_at, allowed_models, rpm, tpm, admin, "
            "metadata, budget_tokens, budget_period) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(key_id, hash_key(key), new.name, now, expires, models, new.rpm, new.tpm, int(new.admin),
              dump_json(new.metadata) if new.metadata else None, new.budget_tokens, period)],
        )
        record = self.get(key_id)
        assert record is not None
        return key, record

    def get(self, key_id: str, include_revoked: bool = True) -> KeyRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        record = _record(row)[0] if row else None
        return None if record is None or (record.revoked_at is not None and not include_revoked) else record

    def find(self, digest: str) -> KeyRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_sha256 = ?", (digest,)).fetchone()
        if row is None:
            return None
        record, stored = _record(row)
        return record if digests_equal(stored, digest) else None

    def list(self, include_revoked: bool = True) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at").fetchall()
        records = [_record(row)[0] for row in rows]
        return records if include_revoked else [record for record in records if record.revoked_at is None]

    def revoke(self, key_id: str, now: float | None = None, keep_an_admin: bool = True) -> KeyRecord | None:
        """The key's final record when this revoked it; None when there is no such key or it
        was revoked already. A revoked key stays in the store (its usage is history) but is
        gone from the admin API, and presenting it is a 401 that says it was revoked.

        With `keep_an_admin` (no static admin key), the last active admin key is a
        LastAdminKeyError: without it every admin route would be a 401 until a restart. The
        check is part of the UPDATE, so a CLI and the server revoking at once cannot both pass it."""
        if self.get(key_id, include_revoked=False) is None:
            return None
        now = time.time() if now is None else now
        keep = ("AND (admin = 0 OR EXISTS (SELECT 1 FROM api_keys AS other WHERE other.admin = 1 AND other.id != api_keys.id "
                "AND other.revoked_at IS NULL AND (other.expires_at IS NULL OR other.expires_at > ?)))") if keep_an_admin else ""
        changed = self._write(f"UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL {keep}",
                              [(now, key_id, now) if keep_an_admin else (now, key_id)])
        record = self.get(key_id)
        if not changed and record is not None and record.revoked_at is None:
            raise LastAdminKeyError(key_id)
        return record if changed else None

    def update(self, key_id: str, update: KeyUpdate, now: float | None = None) -> KeyRecord | None:
        """The key's new record; None when there is no such key or it was revoked (nothing changes)."""
        now = time.time() if now is None else now
        given = update.model_fields_set
        columns = {
            "name": update.name,
            "allowed_models": json.dumps(update.models) if update.models is not None else None,
            "rpm": update.rpm,
            "tpm": update.tpm,
            "expires_at": now + update.expires_in_s if update.expires_in_s else None,
            "metadata": dump_json(update.metadata) if update.metadata else None,
            "budget_tokens": update.budget_tokens,
            "budget_period": update.budget_period,
        }
        fields = {"allowed_models": "models", "expires_at": "expires_in_s"}
        changes = {column: value for column, value in columns.items() if fields.get(column, column) in given}
        if update.budget_tokens is not None and "budget_period" not in given:  # a new budget without a period: monthly
            current = self.get(key_id)
            changes["budget_period"] = (current.budget_period if current else None) or "month"
        if "budget_tokens" in given and update.budget_tokens is None:
            changes["budget_period"] = None  # no budget, no period
        assignments = ", ".join(f"{column} = ?" for column in changes)
        changed = self._write(f"UPDATE api_keys SET {assignments} WHERE id = ? AND revoked_at IS NULL",
                              [(*changes.values(), key_id)])
        return self.get(key_id) if changed else None

    def budget_spent(self, key_id: str, period_start: float) -> int:
        with self._lock:
            try:
                row = self._db.execute("SELECT spent FROM budget_spend WHERE key_id = ? AND period_start = ?",
                                       (key_id, period_start)).fetchone()
            except sqlite3.OperationalError:  # a read-only store from before budgets
                return 0
        return row[0] if row else 0

    def set_budget_spent(self, key_id: str, period_start: float, spent: int) -> None:
        self._write("INSERT OR REPLACE INTO budget_spend (key_id, period_start, spent) VALUES (?, ?, ?)",
                    [(key_id, period_start, spent)])

    def add_usage(self, usage: dict[str, KeyUsage]) -> None:
        self._write(
            "UPDATE api_keys SET requests = requests + ?, prompt_tokens = prompt_tokens + ?, "
            "completion_tokens = completion_tokens + ?, last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
            [(u.requests, u.prompt_tokens, u.completion_tokens, u.last_used_at or 0, key_id) for key_id, u in usage.items()],
        )

    def _write(self, sql: str, rows: list[tuple]) -> int:
        """One write statement (all rows or none), returning the rows it changed: a full or
        read-only disk is a KeyStoreWriteError."""
        with self._lock:
            try:
                return self._db.executemany(sql, rows).rowcount
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
                raise KeyStoreWriteError(exc) from None

    def read(self, sql: str, params: tuple) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def write_script(self, sql: str) -> None:
        with self._lock:
            self._db.execute(sql)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Statements that all happen or none (an APIError raised inside undoes them)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
                raise KeyStoreWriteError(exc) from None

    def has_active_admin(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return any(record.admin and record.active(now) for record in self.list())

    def close(self) -> None:
        self._db.close()


def ensure_admin_key(store: KeyStore, state_dir: Path, static_admin: bool) -> Path | None:
    """On a first start with no admin key, create one and write it to <state_dir>/admin.key
    (mode 0600). Returns the file's path when it created one. A static admin key
    (HF_SERVER_API_KEY) replaces this."""
    if static_admin or store.has_active_admin():
        return None
    key, _ = store.create(NewKey(name="admin", admin=True))
    path = state_dir / ADMIN_KEY_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)
    return path


def read_admin_key_file(state_dir: Path) -> str | None:
    path = state_dir / ADMIN_KEY_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None

