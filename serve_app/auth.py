"""API keys: generation, hashing, the SQLite key store, and per-key model access.

A key is ``hf_`` plus 32 random bytes (urlsafe base64). Only its SHA-256 is stored; lookups
hash the presented key and compare digests in constant time. Keys live in SQLite under the
state directory, so they survive restarts of the state actor and of the cluster, and the CLI
can manage them while the server runs (SQLite in WAL mode lets both write).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.config import MODEL_ID_PATTERN

KEY_PREFIX = "hf_"
MAX_KEY_LENGTH = 128
_KEY_BODY = re.compile(r"^[A-Za-z0-9_-]{16,120}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,63}$")
ADMIN_KEY_FILE = "admin.key"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def well_formed(key: str) -> bool:
    """Shape check before any lookup: prefix, length, urlsafe characters."""
    return len(key) <= MAX_KEY_LENGTH and key.startswith(KEY_PREFIX) and bool(_KEY_BODY.match(key[len(KEY_PREFIX) :]))


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
    admin: bool = False
    usage: KeyUsage = Field(default_factory=KeyUsage)

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


class NewKey(BaseModel):
    """What POST /admin/keys and `hfserve keys create` accept."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Letters, digits, space and . _ @ : - (1-64 characters).")
    models: list[str] | None = Field(None, min_length=1, max_length=256, description="Allowed model ids; omit for all.")
    rpm: int | None = Field(None, ge=1, le=10_000_000, description="Requests per minute; omit for the default.")
    tpm: int | None = Field(None, ge=1, le=10_000_000_000, description="Tokens per minute; omit for the default.")
    admin: bool = Field(False, description="May use /admin, /status and /metrics.")
    expires_in_s: int | None = Field(None, ge=60, le=10 * 365 * 86400, description="Lifetime in seconds.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("name must be 1-64 characters: letters, digits, space and . _ @ : -")
        return value

    @field_validator("models")
    @classmethod
    def _model_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            bad = [m for m in value if not re.match(MODEL_ID_PATTERN, m)]
            if bad:
                raise ValueError(f"not a valid model id: {bad[0]!r}")
        return value


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
    last_used_at REAL
)
"""
_COLUMNS = (
    "id, key_sha256, name, created_at, expires_at, revoked_at, allowed_models, rpm, tpm, admin, "
    "requests, prompt_tokens, completion_tokens, last_used_at"
)


def _record(row: tuple) -> tuple[KeyRecord, str]:
    (key_id, digest, name, created, expires, revoked, models, rpm, tpm, admin, requests, prompt, completion, last) = row
    record = KeyRecord(
        id=key_id, name=name, created_at=created, expires_at=expires, revoked_at=revoked,
        allowed_models=json.loads(models) if models is not None else None, rpm=rpm, tpm=tpm, admin=bool(admin),
        usage=KeyUsage(requests=requests, prompt_tokens=prompt, completion_tokens=completion, last_used_at=last),
    )
    return record, digest


class KeyStore:
    def __init__(self, path: Path):
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        self.path = path
        # Create the file private before SQLite opens it: SQLite gives its -wal and -shm
        # files the database file's permissions.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=10, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def create(self, new: NewKey, now: float | None = None) -> tuple[str, KeyRecord]:
        """Returns the key (shown once, never stored) and its record."""
        now = time.time() if now is None else now
        key, key_id = generate_key(), "key_" + secrets.token_hex(8)
        expires = now + new.expires_in_s if new.expires_in_s else None
        models = json.dumps(new.models) if new.models is not None else None
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys (id, key_sha256, name, created_at, expires_at, allowed_models, rpm, tpm, admin) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, hash_key(key), new.name, now, expires, models, new.rpm, new.tpm, int(new.admin)),
            )
        record = self.get(key_id)
        assert record is not None
        return key, record

    def get(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return _record(row)[0] if row else None

    def find(self, digest: str) -> KeyRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_sha256 = ?", (digest,)).fetchone()
        if row is None:
            return None
        record, stored = _record(row)
        return record if digests_equal(stored, digest) else None

    def list(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at").fetchall()
        return [_record(row)[0] for row in rows]

    def revoke(self, key_id: str, now: float | None = None) -> KeyRecord | None:
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))
        return self.get(key_id)

    def add_usage(self, usage: dict[str, KeyUsage]) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE api_keys SET requests = requests + ?, prompt_tokens = prompt_tokens + ?, "
                "completion_tokens = completion_tokens + ?, last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
                [(u.requests, u.prompt_tokens, u.completion_tokens, u.last_used_at or 0, key_id) for key_id, u in usage.items()],
            )

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


def parse_duration(text: str) -> int:
    """'30d', '12h', '90m', '3600s' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m, 3600s)")
    number, unit = int(match.group(1)), match.group(2) or "s"
    return number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
