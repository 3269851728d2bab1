"""Key generation, hashing, the SQLite store, expiry, revocation, the admin bootstrap."""

from __future__ import annotations

import os
import stat

import pytest
from pydantic import ValidationError

from serve_app.auth import (
    KeyStore,
    NewKey,
    ensure_admin_key,
    generate_key,
    hash_key,
    parse_duration,
    read_admin_key_file,
    well_formed,
)


def test_key_shape():
    key = generate_key()
    assert key.startswith("hf_") and len(key) == 3 + 43
    assert well_formed(key)
    assert generate_key() != key
    for bad in ["sk-" + key[3:], "hf_", "hf_short", key + "!", "hf_" + "a" * 200, "", " " + key]:
        assert not well_formed(bad)


def test_only_the_hash_is_stored(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    key, record = store.create(NewKey(name="alice"))
    files = sorted(tmp_path.glob("keys.db*"))  # the database and its write-ahead log
    raw = b"".join(path.read_bytes() for path in files)
    assert key.encode() not in raw
    assert hash_key(key).encode() in raw
    assert store.find(hash_key(key)).id == record.id
    assert store.find(hash_key(generate_key())) is None
    assert {stat.S_IMODE(os.stat(path).st_mode) for path in files} == {0o600}


def test_expiry_and_revocation(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    _, record = store.create(NewKey(name="temp", expires_in_s=60), now=1000.0)
    assert record.active(1059.0) and not record.active(1060.0)
    revoked = store.revoke(record.id, now=1010.0)
    assert revoked.revoked_at == 1010.0 and not revoked.active(1011.0)
    assert store.revoke("key_missing") is None


def test_model_access(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    _, limited = store.create(NewKey(name="limited", models=["a"]))
    _, everything = store.create(NewKey(name="all"))
    assert limited.may_use("a") and not limited.may_use("b")
    assert everything.may_use("anything")


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "x'; DROP TABLE api_keys;--"},
        {"name": ""},
        {"name": "a" * 65},
        {"name": "ok", "rpm": -1},
        {"name": "ok", "rpm": 10**12},
        {"name": "ok", "tpm": 0},
        {"name": "ok", "models": ["bad model/id"]},
        {"name": "ok", "models": []},
        {"name": "ok", "expires_in_s": 5},
        {"name": "ok", "surprise": True},
    ],
)
def test_bad_new_keys_are_rejected_before_touching_the_store(tmp_path, fields):
    store = KeyStore(tmp_path / "keys.db")
    with pytest.raises(ValidationError):
        store.create(NewKey(**fields))
    assert store.list() == []


def test_usage_accumulates(tmp_path):
    from serve_app.auth import KeyUsage

    store = KeyStore(tmp_path / "keys.db")
    _, record = store.create(NewKey(name="u"))
    store.add_usage({record.id: KeyUsage(requests=2, prompt_tokens=10, completion_tokens=5, last_used_at=5.0)})
    store.add_usage({record.id: KeyUsage(requests=1, prompt_tokens=1, completion_tokens=1, last_used_at=3.0)})
    usage = store.get(record.id).usage
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.last_used_at) == (3, 11, 6, 5.0)


def test_admin_bootstrap_writes_a_private_file_once(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    path = ensure_admin_key(store, tmp_path, static_admin=False)
    assert path == tmp_path / "admin.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = read_admin_key_file(tmp_path)
    assert store.find(hash_key(key)).admin
    assert ensure_admin_key(store, tmp_path, static_admin=False) is None  # already has one
    other = KeyStore(tmp_path / "other.db")
    assert ensure_admin_key(other, tmp_path / "x", static_admin=True) is None  # HF_SERVER_API_KEY instead


def test_parse_duration():
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 43200
    assert parse_duration("90m") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(ValueError):
        parse_duration("soon")
