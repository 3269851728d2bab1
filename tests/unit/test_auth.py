"""Key generation, hashing, the SQLite store, expiry, revocation, the admin bootstrap."""

from __future__ import annotations

import os
import stat

import pytest
from pydantic import ValidationError

from serve_app.cli.keys import parse_duration
from serve_app.state.keys import (
    KeyStore,
    LastAdminKeyError,
    NewKey,
    ensure_admin_key,
    generate_key,
    hash_key,
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
    from serve_app.state.keys import KeyUsage

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


def test_the_last_active_admin_key_cannot_be_revoked(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    _, first = store.create(NewKey(name="first", admin=True), now=1000.0)
    _, expired = store.create(NewKey(name="expired", admin=True, expires_in_s=60), now=1000.0)
    _, user = store.create(NewKey(name="user"), now=1000.0)
    assert store.revoke(user.id, now=2000.0).revoked_at == 2000.0  # not an admin key
    with pytest.raises(LastAdminKeyError) as refused:  # the other admin key has expired
        store.revoke(first.id, now=2000.0)
    assert (refused.value.status_code, refused.value.code, refused.value.param) == (409, "last_admin_key", "key_id")
    assert store.get(first.id).revoked_at is None
    assert store.revoke(expired.id, now=2000.0) is not None  # an expired admin key is not the last active one
    _, second = store.create(NewKey(name="second", admin=True), now=2000.0)
    assert store.revoke(first.id, now=2001.0) is not None  # another admin remains
    with pytest.raises(LastAdminKeyError):
        store.revoke(second.id, now=2002.0)
    assert store.revoke(second.id, now=2002.0, keep_an_admin=False) is not None  # a static admin key stays
    assert store.revoke(second.id) is None  # already revoked


@pytest.mark.models({})
def test_the_admin_api_and_the_cli_refuse_to_revoke_the_last_admin_key(tmp_path, monkeypatch, capsys, serve):
    from fastapi.testclient import TestClient

    from serve_app.cli.main import main
    from tests.unit.fakes import make_app

    app, _, core = make_app(tmp_path, serve)
    admin_id = core.store.list()[0].id
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
        refused = client.delete(f"/admin/keys/{admin_id}", headers=headers)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "last_admin_key" and "last active admin key" in refused.json()["error"]["message"]
        assert client.get("/admin/keys", headers=headers).status_code == 200  # the admin routes still answer
    core.store.close()
    monkeypatch.setenv("HF_SERVER_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("HF_SERVER_API_KEY", raising=False)
    assert main(["keys", "revoke", admin_id]) == 1
    assert "409" in capsys.readouterr().err
    assert KeyStore(tmp_path / "keys.db").get(admin_id).revoked_at is None
