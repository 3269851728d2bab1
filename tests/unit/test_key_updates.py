"""PATCH /admin/keys/{id} and `hfserve keys update`: a key's name, models, limits, expiry and
metadata change without rotating its secret, and a bad update is a 400 naming the field that
changes nothing."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from serve_app.cli.main import main
from serve_app.state.keys import MAX_METADATA_BYTES, KeyStore
from tests.unit.test_gateway import CHAT, bearer, new_key


def test_an_update_takes_effect_and_the_secret_stays(api):
    client, _, admin = api
    key, key_id = new_key(client, admin, models=["chat-model"], rpm=100)
    patched = client.patch(f"/admin/keys/{key_id}", headers=admin,
                           json={"name": "renamed", "rpm": 1, "metadata": {"team": "search", "cost_centre": 42}})
    assert patched.status_code == 200, patched.text
    record = patched.json()
    assert (record["name"], record["rpm"], record["metadata"]) == ("renamed", 1, {"team": "search", "cost_centre": 42})
    assert record["allowed_models"] == ["chat-model"]  # not given: kept
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 200  # the same secret
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 429  # rpm 1 now
    moved = client.patch(f"/admin/keys/{key_id}", headers=admin, json={"models": ["embed-model"], "rpm": None})
    assert moved.json()["allowed_models"] == ["embed-model"] and moved.json()["rpm"] is None
    refused = client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert refused.status_code == 404 and "do not have access" in refused.json()["error"]["message"]
    opened = client.patch(f"/admin/keys/{key_id}", headers=admin, json={"models": None})
    assert opened.json()["allowed_models"] is None
    assert client.get(f"/admin/keys/{key_id}", headers=admin).json()["metadata"] == {"team": "search", "cost_centre": 42}


def test_expiry_is_set_from_now_or_removed(api):
    client, _, admin = api
    _, key_id = new_key(client, admin, expires_in_s=60)
    before = time.time()
    later = client.patch(f"/admin/keys/{key_id}", headers=admin, json={"expires_in_s": 3600}).json()
    assert before + 3600 <= later["expires_at"] <= time.time() + 3600
    assert client.patch(f"/admin/keys/{key_id}", headers=admin, json={"expires_in_s": None}).json()["expires_at"] is None


@pytest.mark.parametrize(("body", "param"), [
    ({"metadata": {"notes": "x" * MAX_METADATA_BYTES}}, "metadata"),
    ({"metadata": ["not", "an", "object"]}, "metadata"),
    ({"admin": True}, "admin"),
    ({"rpm": 0}, "rpm"),
    ({"name": None}, "name"),
    ({"name": "x'; DROP TABLE api_keys;--"}, "name"),
    ({"models": ["no spaces allowed"]}, "models"),
    ({"expires_in_s": 1}, "expires_in_s"),
])
def test_a_bad_update_is_a_400_naming_the_field_and_changes_nothing(api, body, param):
    client, core, admin = api
    _, key_id = new_key(client, admin, rpm=100, metadata={"keep": True})
    before = core.store.get(key_id)
    response = client.patch(f"/admin/keys/{key_id}", headers=admin, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert core.store.get(key_id) == before


def test_an_empty_update_is_a_400(api):
    client, _, admin = api
    _, key_id = new_key(client, admin)
    response = client.patch(f"/admin/keys/{key_id}", headers=admin, json={})
    assert response.status_code == 400 and "at least one of" in response.json()["error"]["message"]


def test_a_revoked_or_unknown_key_is_a_404_and_stays_as_it_was(api):
    client, core, admin = api
    key, key_id = new_key(client, admin, rpm=5)
    assert client.delete(f"/admin/keys/{key_id}", headers=admin).status_code == 200
    revoked = core.store.get(key_id)
    response = client.patch(f"/admin/keys/{key_id}", headers=admin, json={"rpm": 1000})
    assert response.status_code == 404 and response.json()["error"]["param"] == "key_id"
    assert core.store.get(key_id) == revoked
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 401
    assert client.patch("/admin/keys/key_nope", headers=admin, json={"rpm": 1}).status_code == 404


def test_only_an_admin_key_may_update(api):
    client, core, admin = api
    key, key_id = new_key(client, admin)
    assert client.patch(f"/admin/keys/{key_id}", headers=bearer(key), json={"rpm": 10**6}).status_code == 403
    assert core.store.get(key_id).rpm is None


def test_a_store_from_before_metadata_gains_the_column(tmp_path):
    path = tmp_path / "keys.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE api_keys (id TEXT PRIMARY KEY, key_sha256 TEXT NOT NULL UNIQUE, name TEXT NOT NULL, "
               "created_at REAL NOT NULL, expires_at REAL, revoked_at REAL, allowed_models TEXT, rpm INTEGER, "
               "tpm INTEGER, admin INTEGER NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 0, prompt_tokens "
               "INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0, last_used_at REAL)")
    db.execute("INSERT INTO api_keys (id, key_sha256, name, created_at) VALUES ('key_old', 'x', 'old', 1.0)")
    db.commit()
    db.close()
    store = KeyStore(path)
    assert store.get("key_old").metadata == {}
    store.close()


def test_the_cli_updates_a_key_on_the_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_SERVER_STATE_DIR", str(tmp_path))
    assert main(["keys", "--json", "create", "--name", "cli", "--rpm", "10", "--models", "a,b"]) == 0
    key_id = json.loads(capsys.readouterr().out)["id"]
    assert main(["keys", "--json", "update", key_id, "--rpm", "default", "--models", "*", "--expires", "12h",
                 "--metadata", '{"owner": "ops"}']) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["rpm"], record["allowed_models"], record["metadata"]) == (None, None, {"owner": "ops"})
    assert record["expires_at"] == pytest.approx(time.time() + 12 * 3600, abs=60)
    assert main(["keys", "update", key_id, "--metadata", "[1, 2]"]) == 2
    assert "metadata" in capsys.readouterr().err
    assert main(["keys", "update", "key_nope", "--rpm", "5"]) == 1
