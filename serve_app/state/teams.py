"""Teams: API keys that share model access, RPM, TPM and a token budget, in the key store's
SQLite database (table `teams`; a key's team is `api_keys.team_id`). A key is in at most one
team. The key's own limits apply too, and the stricter wins (serve_app/state/rate_limiter.py)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.errors import ConflictError, InvalidRequestError, NotFoundError
from contract.schema_rules import integer

from .keys import (
    MAX_METADATA_BYTES,
    BudgetPeriod,
    BudgetTokens,
    KeyRecord,
    KeyStore,
    Metadata,
    ModelIds,
    SafeName,
    dump_json,
)

KEY_ID_PATTERN = r"^key_[0-9a-f]{16}$"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    allowed_models TEXT,
    rpm INTEGER,
    tpm INTEGER,
    budget_tokens INTEGER,
    budget_period TEXT,
    metadata TEXT
)
"""
_COLUMNS = "id, name, created_at, allowed_models, rpm, tpm, budget_tokens, budget_period, metadata"
KeyId = Annotated[str, Field(pattern=KEY_ID_PATTERN)]
KeyIds = Annotated[list[KeyId], Field(min_length=1, max_length=1000)]


class TeamRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    created_at: float
    allowed_models: list[str] | None = None  # None: every model its keys may use
    rpm: int | None = None  # None: the team adds no limit
    tpm: int | None = None
    budget_tokens: int | None = None
    budget_period: str | None = None
    metadata: dict[str, Any] = {}
    keys: list[str] = []  # its members' key ids

    def may_use(self, *names: str | None) -> bool:
        return self.allowed_models is None or any(name in self.allowed_models for name in names if name)


class KeyWithTeam(BaseModel):
    """What a key lookup answers: the key, and the team whose limits it shares."""

    key: KeyRecord
    team: TeamRecord | None = None


class NewTeam(BaseModel):
    """What POST /admin/teams and `hfserve teams create` accept."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: SafeName = Field(..., description="Letters, digits, space and . _ @ : - (1-64 characters).")
    models: ModelIds | None = Field(None, min_length=1, max_length=256,
                                    description="Model ids (or aliases) the team's keys may use; omit for all.")
    rpm: integer(ge=1, le=10_000_000) | None = Field(None, description="Requests per minute of all its keys together.")
    tpm: integer(ge=1, le=10_000_000_000) | None = Field(None, description="Tokens per minute of all its keys together.")
    budget_tokens: BudgetTokens | None = None
    budget_period: BudgetPeriod | None = None
    metadata: Metadata | None = Field(None, description=f"Free-form JSON object, at most {MAX_METADATA_BYTES} bytes.")
    keys: KeyIds | None = Field(None, description="Ids of keys to make members at once.")


class TeamUpdate(BaseModel):
    """What PATCH /admin/teams/{id} accepts: the fields given change; null removes a limit."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"minProperties": 1})

    name: SafeName = Field(None, description="Letters, digits, space and . _ @ : - (1-64 characters).")  # type: ignore[assignment]
    models: ModelIds | None = Field(None, min_length=1, max_length=256, description="Model ids; null for all.")
    rpm: integer(ge=1, le=10_000_000) | None = Field(None, description="Requests per minute; null for no team limit.")
    tpm: integer(ge=1, le=10_000_000_000) | None = Field(None, description="Tokens per minute; null for no team limit.")
    budget_tokens: BudgetTokens | None = None  # null: no budget
    budget_period: BudgetPeriod = None  # type: ignore[assignment]
    metadata: Metadata = Field(None, description="Free-form JSON object; replaces the team's.")  # type: ignore[assignment]

    @model_validator(mode="after")
    def _changes_something(self) -> TeamUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, models, rpm, tpm, budget_tokens, budget_period and metadata")
        return self


class TeamMembers(BaseModel):
    """What POST /admin/teams/{id}/keys accepts."""

    model_config = ConfigDict(extra="forbid", strict=True)

    keys: KeyIds = Field(..., description="Ids of keys to add; a key is in at most one team.")


class TeamStore:
    """Teams beside the keys, over the key store's connection (one writer, WAL)."""

    def __init__(self, keys: KeyStore):
        self._keys = keys
        if not keys.read_only:
            keys.write_script(_SCHEMA)
            keys.write_script("CREATE INDEX IF NOT EXISTS api_keys_team ON api_keys (team_id)")

    def create(self, new: NewTeam, now: float | None = None) -> TeamRecord:
        team_id = "team_" + secrets.token_hex(8)
        period = new.budget_period or ("month" if new.budget_tokens else None)
        with self._keys.transaction() as db:
            if new.keys:
                self._check_free(db, new.keys, team_id)
            db.execute(f"INSERT INTO teams ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (team_id, new.name, time.time() if now is None else now,
                        json.dumps(new.models) if new.models is not None else None, new.rpm, new.tpm,
                        new.budget_tokens, period, dump_json(new.metadata) if new.metadata else None))
            if new.keys:
                db.executemany("UPDATE api_keys SET team_id = ? WHERE id = ?", [(team_id, k) for k in new.keys])
        record = self.get(team_id)
        assert record is not None
        return record

    def get(self, team_id: str) -> TeamRecord | None:
        rows = self._keys.read(f"SELECT {_COLUMNS} FROM teams WHERE id = ?", (team_id,))
        if not rows:
            return None
        members = self._keys.read("SELECT id FROM api_keys WHERE team_id = ? AND revoked_at IS NULL ORDER BY created_at",
                                  (team_id,))
        return _record(rows[0], [row[0] for row in members])

    def list(self) -> list[TeamRecord]:
        members: dict[str, list[str]] = {}
        for key_id, team_id in self._keys.read("SELECT id, team_id FROM api_keys WHERE team_id IS NOT NULL AND "
                                               "revoked_at IS NULL ORDER BY created_at", ()):
            members.setdefault(team_id, []).append(key_id)
        return [_record(row, members.get(row[0], [])) for row in
                self._keys.read(f"SELECT {_COLUMNS} FROM teams ORDER BY created_at", ())]

    def update(self, team_id: str, update: TeamUpdate) -> TeamRecord | None:
        given = update.model_fields_set
        columns = {"name": update.name, "allowed_models": json.dumps(update.models) if update.models is not None else None,
                   "rpm": update.rpm, "tpm": update.tpm, "budget_tokens": update.budget_tokens,
                   "budget_period": update.budget_period,
                   "metadata": dump_json(update.metadata) if update.metadata else None}
        changes = {column: value for column, value in columns.items()
                   if ("models" if column == "allowed_models" else column) in given}
        if update.budget_tokens is not None and "budget_period" not in given:  # a new budget without a period: monthly
            current = self.get(team_id)
            changes["budget_period"] = (current.budget_period if current else None) or "month"
        if "budget_tokens" in given and update.budget_tokens is None:
            changes["budget_period"] = None
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._keys.transaction() as db:
            changed = db.execute(f"UPDATE teams SET {assignments} WHERE id = ?", (*changes.values(), team_id)).rowcount
        return self.get(team_id) if changed else None

    def delete(self, team_id: str) -> TeamRecord | None:
        """The team's last record; its keys stay, in no team."""
        record = self.get(team_id)
        if record is None:
            return None
        with self._keys.transaction() as db:
            db.execute("UPDATE api_keys SET team_id = NULL WHERE team_id = ?", (team_id,))
            db.execute("DELETE FROM teams WHERE id = ?", (team_id,))
        return record.model_copy(update={"keys": []})

    def add_keys(self, team_id: str, key_ids: list[str]) -> TeamRecord | None:
        """None when there is no such team; a NotFoundError or ConflictError naming a key that
        cannot join (none joins then)."""
        with self._keys.transaction() as db:
            if db.execute("SELECT 1 FROM teams WHERE id = ?", (team_id,)).fetchone() is None:
                return None
            self._check_free(db, key_ids, team_id)
            db.executemany("UPDATE api_keys SET team_id = ? WHERE id = ?", [(team_id, k) for k in key_ids])
        return self.get(team_id)

    def remove_key(self, team_id: str, key_id: str) -> TeamRecord | None:
        """None when there is no such team; a NotFoundError when the key is not in it."""
        if self.get(team_id) is None:
            return None
        with self._keys.transaction() as db:
            if not db.execute("UPDATE api_keys SET team_id = NULL WHERE id = ? AND team_id = ? AND revoked_at IS NULL",
                              (key_id, team_id)).rowcount:
                raise NotFoundError(f"API key '{key_id}' is not in team '{team_id}'.", param="key_id")
        return self.get(team_id)

    @staticmethod
    def _check_free(db, key_ids: list[str], team_id: str) -> None:
        if len(set(key_ids)) != len(key_ids):
            raise InvalidRequestError("'keys' names a key twice.", param="keys")
        for key_id in key_ids:
            row = db.execute("SELECT team_id FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"No API key with id '{key_id}'.", param="keys")
            if row[0] is not None and row[0] != team_id:
                raise ConflictError(f"API key '{key_id}' is in team '{row[0]}'; remove it from there first.",
                                    param="keys", code="key_in_team")


def _record(row: tuple, keys: list[str]) -> TeamRecord:
    team_id, name, created, models, rpm, tpm, budget_tokens, budget_period, metadata = row
    return TeamRecord(id=team_id, name=name, created_at=created,
                      allowed_models=json.loads(models) if models is not None else None, rpm=rpm, tpm=tpm,
                      budget_tokens=budget_tokens, budget_period=budget_period,
                      metadata=json.loads(metadata) if metadata else {}, keys=keys)
