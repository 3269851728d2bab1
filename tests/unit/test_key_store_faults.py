"""The key store's disk fills up or turns read-only under a running ingress: key writes get a
clear 503, while key lookups, serving and the admin reads go on, and nothing stored is lost
or corrupted. The faults are real: the state directory is a small tmpfs that the test fills
or remounts read-only (it needs root to mount; without it the test skips, or fails under CI=true)."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest
from fastapi.testclient import TestClient

from serve_app.state.keys import read_admin_key_file
from tests.conftest import ROOT_INSTALL, missing_tool
from tests.unit.fakes import make_app

pytestmark = pytest.mark.models({"chat-model": "text-generation"})  # what `serve` runs
CHAT = {"model": "chat-model", "messages": [{"role": "user", "content": "hello there"}], "temperature": 1}


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "state"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        missing_tool(f"a small tmpfs for a real disk fault (mount: {mounted.stderr.strip()})", ROOT_INSTALL)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def running(small_disk, serve):
    app, gateway, core = make_app(small_disk, serve, key_cache_ttl_s=0.001)
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(small_disk)}"}
        alice = client.post("/admin/keys", json={"name": "alice"}, headers=admin).json()
        yield client, gateway, core, admin, alice, small_disk


def _fill(directory) -> None:
    with open(directory / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def _integrity(path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def _assert_serving_goes_on(client, admin, alice) -> None:
    alice_auth = {"Authorization": f"Bearer {alice['key']}"}
    assert client.post("/v1/chat/completions", json=CHAT, headers=alice_auth).status_code == 200
    assert client.get(f"/admin/keys/{alice['id']}", headers=admin).status_code == 200
    assert alice["id"] in {k["id"] for k in client.get("/admin/keys", headers=admin).json()["data"]}


def test_a_full_disk_refuses_key_writes_with_a_503_and_serving_goes_on(running):
    client, gateway, core, admin, alice, disk = running
    before = [k["id"] for k in client.get("/admin/keys", headers=admin).json()["data"]]
    _fill(disk)
    refused = client.post("/admin/keys", json={"name": "bob"}, headers=admin)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "key_store_unavailable"
    assert "full" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) > 0
    revoke = client.delete(f"/admin/keys/{alice['id']}", headers=admin)
    assert revoke.status_code == 503
    _assert_serving_goes_on(client, admin, alice)  # the failed revoke changed nothing
    client.portal.call(gateway.usage.flush)  # the usage write fails and is kept
    (disk / "filler").unlink()
    client.portal.call(gateway.usage.flush)
    assert client.get(f"/admin/keys/{alice['id']}", headers=admin).json()["usage"]["requests"] == 1
    assert client.post("/admin/keys", json={"name": "bob"}, headers=admin).status_code == 201
    after = [k["id"] for k in client.get("/admin/keys", headers=admin).json()["data"]]
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert _integrity(disk / "keys.db") == "ok"


def test_a_read_only_disk_refuses_key_writes_with_a_503_and_serving_goes_on(small_disk, serve):
    """The state directory turns read-only (a read-only volume, or a disk the kernel remounted
    read-only after errors); hfserve starts on it and serves the keys it has."""
    app, _, first = make_app(small_disk, serve)
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(small_disk)}"}
        alice = client.post("/admin/keys", json={"name": "alice"}, headers=admin).json()
    first.store.close()  # the first server is gone: nothing holds the file open for writing
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        app, gateway, core = make_app(small_disk, serve)
        assert core.store.read_only
        with TestClient(app) as client:
            refused = client.post("/admin/keys", json={"name": "bob"}, headers=admin)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "key_store_unavailable"
            assert "readonly" in refused.json()["error"]["message"]
            _assert_serving_goes_on(client, admin, alice)
        core.store.close()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert _integrity(small_disk / "keys.db") == "ok"
