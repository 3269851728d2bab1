"""The gateway over fakes and an in-process state core: API keys, model access, rate
limits, the response cache, circuit breakers, admin API. No Ray."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_app.state.keys import read_admin_key_file
from tests.unit.fakes import Clock, make_app

MSG = [{"role": "user", "content": "hello big world"}]
CHAT = {"model": "chat-model", "messages": MSG, "temperature": 0}


@pytest.fixture
def gw(serve, tmp_path):
    """(client, gateway, state core, admin headers) with API keys on."""
    app, gateway, core = make_app(tmp_path, serve, key_cache_ttl_s=0.001, circuit_breaker_threshold=2,
                                  circuit_breaker_timeout_s=30, state_clock=Clock(1000.0))
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
        yield client, gateway, core, admin


def new_key(client, admin, **fields):
    response = client.post("/admin/keys", json={"name": "tester", **fields}, headers=admin)
    assert response.status_code == 201, response.text
    body = response.json()
    return body["key"], body["id"]


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "headers,message",
    [
        ({}, "Missing API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Malformed"),
        ({"Authorization": "Bearer"}, "Malformed"),
        ({"Authorization": "Bearer " + "a" * 600}, "too long"),
        ({"X-API-Key": "x" * 600}, "too long"),
        ({"Authorization": "Bearer sk-" + "a" * 43}, "Incorrect API key"),
        ({"X-API-Key": "hf_' OR 1=1 --"}, "Incorrect API key"),
        ({"Authorization": "Bearer hf_" + "A" * 43}, "Incorrect API key"),
    ],
)
def test_bad_credentials_are_401_and_change_nothing(gw, headers, message):
    client, _, core, _ = gw
    before = [r.model_dump() for r in core.store.list()]
    response = client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and message in error["message"]
    assert "hf_" not in error["message"] and "sk-" not in error["message"]  # never echo a key
    assert [r.model_dump() for r in core.store.list()] == before


def test_bearer_and_x_api_key_both_work(gw):
    client, *_, admin = gw
    key, _ = new_key(client, admin)
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT, headers={"X-API-Key": key}).status_code == 200


def test_open_and_admin_paths(gw):
    client, *_, admin = gw
    key, _ = new_key(client, admin)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    assert client.get("/status").status_code == 401
    assert client.get("/status", headers=bearer(key)).status_code == 403
    assert client.get("/admin/keys", headers=bearer(key)).status_code == 403
    assert client.get("/status", headers=admin).status_code == 200
    assert client.get("/metrics", headers=bearer(key)).status_code == 403


def test_admin_api_lifecycle(gw):
    client, gateway, core, admin = gw
    key, key_id = new_key(client, admin, models=["chat-model"], rpm=100, tpm=10_000)
    listed = client.get("/admin/keys", headers=admin).json()["data"]
    assert key_id in {k["id"] for k in listed}
    assert key not in json.dumps(listed) and hashlib.sha256(key.encode()).hexdigest() not in json.dumps(listed)
    record = client.get(f"/admin/keys/{key_id}", headers=admin).json()
    assert record["allowed_models"] == ["chat-model"] and record["rpm"] == 100 and "key" not in record
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 200
    client.portal.call(gateway.usage.flush)
    usage = client.get(f"/admin/keys/{key_id}", headers=admin).json()["usage"]
    assert usage["requests"] == 1 and usage["prompt_tokens"] == 3 and usage["completion_tokens"] == 3
    revoked = client.delete(f"/admin/keys/{key_id}", headers=admin).json()
    assert revoked["revoked_at"] is not None
    response = client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]
    assert client.get("/admin/keys/key_nope", headers=admin).status_code == 404
    assert client.delete("/admin/keys/key_nope", headers=admin).status_code == 404


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "x'; DROP TABLE api_keys;--"},
        {"name": "ok", "rpm": -5},
        {"name": "ok", "tpm": 10**13},
        {"name": "ok", "models": "chat-model"},
        {"name": "ok", "admin": "yes please"},
        {"name": "ok", "expires_in_s": 1},
    ],
)
def test_bad_key_requests_are_400_and_store_nothing(gw, fields):
    client, _, core, admin = gw
    before = len(core.store.list())
    response = client.post("/admin/keys", json=fields, headers=admin)
    assert response.status_code == 400
    assert response.json()["error"]["param"]
    assert len(core.store.list()) == before


def test_expired_key_is_401(gw):
    import time

    from serve_app.state.keys import NewKey

    client, _, core, _ = gw
    key, _ = core.store.create(NewKey(name="old", expires_in_s=60), now=time.time() - 120)
    response = client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


def test_static_admin_key(serve, tmp_path):
    static = "hf_" + "s" * 43
    app, *_ = make_app(tmp_path, serve, static_admin_key_sha256=hashlib.sha256(static.encode()).hexdigest())
    with TestClient(app) as client:
        assert client.get("/admin/keys", headers=bearer(static)).status_code == 200
    assert read_admin_key_file(tmp_path) is None  # no generated admin.key beside a static one


# ----------------------------------------------------------------------------- model access


def test_models_outside_the_key_are_invisible(gw):
    client, *_, admin = gw
    key, _ = new_key(client, admin, models=["embed-model"])
    response = client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "The model 'chat-model' does not exist or you do not have access to it."
    assert [m["id"] for m in client.get("/v1/models", headers=bearer(key)).json()["data"]] == ["embed-model"]
    assert client.get("/v1/models/chat-model", headers=bearer(key)).status_code == 404


# ----------------------------------------------------------------------------- rate limits


def test_rpm_limit_gives_429_with_headers(gw):
    client, *_, admin = gw
    key, _ = new_key(client, admin, rpm=2)
    first = client.post("/v1/chat/completions", json={**CHAT, "temperature": 1}, headers=bearer(key))
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["X-RateLimit-Limit"] == "2" and int(first.headers["X-RateLimit-Reset"]) > 0
    assert client.post("/v1/chat/completions", json={**CHAT, "temperature": 1}, headers=bearer(key)).status_code == 200
    limited = client.post("/v1/chat/completions", json={**CHAT, "temperature": 1}, headers=bearer(key))
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert int(limited.headers["retry-after"]) >= 1 and int(limited.headers["retry-after-ms"]) >= 1
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"


def test_tpm_limit(gw):
    client, *_, admin = gw
    key, _ = new_key(client, admin, tpm=100)
    body = {**CHAT, "temperature": 1, "max_tokens": 80}
    assert client.post("/v1/chat/completions", json=body, headers=bearer(key)).status_code == 200
    limited = client.post("/v1/chat/completions", json=body, headers=bearer(key))
    # the first one used only 6 of the 80+ reserved, but the refund lands on the next flush
    assert limited.status_code in (200, 429)
    # A budget over the key's whole TPM could never pass: a 400 naming the field, not a 429.
    huge = client.post("/v1/chat/completions", json={**body, "max_tokens": 5000}, headers=bearer(key))
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "max_tokens"
    assert "too large" in huge.json()["error"]["message"]


def test_every_authenticated_response_has_rate_limit_headers(gw):
    client, *_, admin = gw
    key, _ = new_key(client, admin)
    for response in (
        client.get("/v1/models", headers=bearer(key)),
        client.post("/v1/chat/completions", json={"model": "nope", "messages": MSG}, headers=bearer(key)),
        client.post("/v1/chat/completions", json={**CHAT, "n": 0}, headers=bearer(key)),
    ):
        assert "x-ratelimit-limit-requests" in response.headers, response.status_code
        assert "X-RateLimit-Remaining" in response.headers


# ----------------------------------------------------------------------------- cache


def test_deterministic_requests_are_cached_per_key(gw, serve):
    client, gateway, _, admin = gw
    model = serve.models["chat-model"]
    alice, _ = new_key(client, admin, name="alice")
    bob, _ = new_key(client, admin, name="bob")
    first = client.post("/v1/chat/completions", json=CHAT, headers=bearer(alice))
    assert first.headers["x-cache"] == "MISS"
    client.portal.call(gateway.cache.flush)
    calls = model.calls
    second = client.post("/v1/chat/completions", json=CHAT, headers=bearer(alice))
    assert second.headers["x-cache"] == "HIT" and model.calls == calls
    assert second.json()["choices"] == first.json()["choices"] and second.json()["id"] != first.json()["id"]
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(bob)).headers["x-cache"] == "MISS"
    bypass = client.post("/v1/chat/completions", json=CHAT, headers={**bearer(alice), "Cache-Control": "no-cache"})
    assert bypass.headers["x-cache"] == "MISS" and model.calls == calls + 2
    sampled = client.post("/v1/chat/completions", json={**CHAT, "temperature": 0.8}, headers=bearer(alice))
    assert "x-cache" not in sampled.headers


def test_global_cache_scope_shares_entries(serve, tmp_path):
    app, gateway, core = make_app(tmp_path, serve, cache_scope="global")
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
        alice, _ = new_key(client, admin, name="alice")
        bob, _ = new_key(client, admin, name="bob")
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(alice)).headers["x-cache"] == "MISS"
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(bob)).headers["x-cache"] == "HIT"


def test_a_hung_model_call_is_a_504_and_a_failure(gw, serve):
    client, gateway, core, admin = gw
    model = serve.models["chat-model"]
    model.delay_s, model.request_timeout_s = 1.0, 0.1
    client.portal.call(gateway.directory.refresh)  # pick up the model's new timeout
    assert gateway.directory._entries["chat-model"].info.request_timeout_s == 0.1
    response = client.post("/v1/chat/completions", json={**CHAT, "temperature": 1}, headers=admin)
    assert response.status_code == 504
    assert response.json()["error"] == {
        "message": "The model 'chat-model' did not answer within 0.1s.", "type": "timeout", "param": None, "code": "timeout"
    }
    assert core.breaker_snapshots()["chat-model"].consecutive_failures == 1


def test_stream_is_replayed_from_the_cache(gw):
    client, gateway, _, admin = gw
    key, _ = new_key(client, admin)
    stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=stream, headers=bearer(key)) as miss:
        assert miss.headers["x-cache"] == "MISS"
        miss_events = [json.loads(line[6:]) for line in miss.iter_lines() if line.startswith("data: {")]
    client.portal.call(gateway.cache.flush)
    with client.stream("POST", "/v1/chat/completions", json=stream, headers=bearer(key)) as hit:
        assert hit.headers["x-cache"] == "HIT"
        lines = [line for line in hit.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "hello big world"
    assert events[-1]["usage"] == miss_events[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    plain = client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))  # the stream filled it
    assert plain.headers["x-cache"] == "HIT" and plain.json()["choices"][0]["message"]["content"] == text


def test_embeddings_are_cached_per_input(gw, serve):
    client, gateway, _, admin = gw
    model = serve.models["embed-model"]
    key, _ = new_key(client, admin)
    first = client.post("/v1/embeddings", json={"model": "embed-model", "input": ["a", "bb"]}, headers=bearer(key))
    assert first.headers["x-cache"] == "MISS"
    client.portal.call(gateway.cache.flush)
    second = client.post("/v1/embeddings", json={"model": "embed-model", "input": ["a", "bb", "ccc"], "encoding_format": "base64"},
                         headers=bearer(key))
    assert model.embedded == ["a", "bb", "ccc"]  # only the new input was computed
    assert second.headers["x-cache"] == "MISS"
    vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist() for d in second.json()["data"]]
    assert vectors == [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]
    assert second.json()["usage"]["prompt_tokens"] == 9
    client.portal.call(gateway.cache.flush)
    third = client.post("/v1/embeddings", json={"model": "embed-model", "input": ["ccc", "a"]}, headers=bearer(key))
    assert third.headers["x-cache"] == "HIT" and [d["embedding"] for d in third.json()["data"]] == [[3.0, 1.0], [1.0, 1.0]]


def test_cache_stats_in_status(gw):
    client, gateway, _, admin = gw
    client.post("/v1/chat/completions", json=CHAT, headers=admin)
    client.portal.call(gateway.cache.flush)
    client.post("/v1/chat/completions", json=CHAT, headers=admin)
    client.portal.call(gateway.state_sync.sync)  # replicas report the lookups they answered themselves
    cache = client.get("/status", headers=admin).json()["cache"]
    assert cache["entries"] == 1 and cache["hits"] == 1 and cache["misses"] == 1 and cache["hit_rate"] == 0.5


# ----------------------------------------------------------------------------- breakers


def test_breaker_opens_rejects_and_recovers(gw, serve):
    client, gateway, core, admin = gw
    model = serve.models["chat-model"]
    body = {**CHAT, "temperature": 1}
    assert client.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "TOO LONG"}]},
                       headers=admin).status_code == 400  # client errors do not count
    model.fail = True
    assert [client.post("/v1/chat/completions", json=body, headers=admin).status_code for _ in range(2)] == [500, 500]
    calls = model.calls
    rejected = client.post("/v1/chat/completions", json=body, headers=admin)
    assert rejected.status_code == 503 and rejected.json()["error"]["code"] == "model_unavailable"
    assert int(rejected.headers["retry-after"]) == 30
    assert model.calls == calls  # rejected without touching the model
    statuses = {m["id"]: m["status"] for m in client.get("/v1/models", headers=admin).json()["data"]}
    assert statuses["chat-model"] == "circuit_open"
    assert client.get("/status", headers=admin).json()["models"][0]["circuit_breaker"]["state"] in ("open",)
    core._clock.now += 31  # the breaker's timeout passes: HALF_OPEN
    client.portal.call(gateway.state_sync.sync)
    model.fail = False
    assert client.post("/v1/chat/completions", json=body, headers=admin).status_code == 200  # the probe
    assert gateway.breakers.status_of("chat-model") is None  # closed again


def test_a_model_serve_reports_unavailable_counts_as_a_failure(gw, serve):
    from serve_app.ingress.model_directory import AppState

    client, gateway, core, admin = gw
    body = {**CHAT, "temperature": 1}
    serve.states["chat-model"] = AppState("chat-model", "UNHEALTHY", "replica died")
    client.portal.call(gateway.directory.refresh)
    first = client.post("/v1/chat/completions", json=body, headers=admin)
    assert first.status_code == 503 and "unavailable" in first.json()["error"]["message"]
    second = client.post("/v1/chat/completions", json=body, headers=admin)  # threshold 2: now open
    assert second.status_code == 503 and "circuit breaker" in second.json()["error"]["message"]
    assert int(second.headers["retry-after"]) == 30
    serve.states["embed-model"] = AppState("embed-model", "DEPLOYING")  # loading is not a failure
    client.portal.call(gateway.directory.refresh)
    for _ in range(3):
        assert client.post("/v1/embeddings", json={"model": "embed-model", "input": "x"}, headers=admin).status_code == 503
    assert "embed-model" not in core.breaker_snapshots()


def test_a_replacement_replica_lets_the_breaker_probe_at_once(gw, serve):
    from serve_app.ingress.model_directory import AppState

    client, gateway, core, admin = gw
    model = serve.models["chat-model"]
    body = {**CHAT, "temperature": 1}
    model.fail = True
    assert [client.post("/v1/chat/completions", json=body, headers=admin).status_code for _ in range(2)] == [500, 500]
    assert client.post("/v1/chat/completions", json=body, headers=admin).status_code == 503  # open, 30 s to go
    for _ in range(3):  # late failures do not push the open time back
        core.breaker_report("chat-model", False)
    assert core.breaker_snapshots()["chat-model"].retry_after_s == 30
    # Serve replaces the replica: the directory sees the old one gone, then a new healthy one.
    serve.states["chat-model"] = AppState("chat-model", "UNHEALTHY", "replica died")
    client.portal.call(gateway.directory.refresh)
    model.fail, model.replica_id = False, "r2"
    serve.states["chat-model"] = AppState("chat-model", "RUNNING")
    client.portal.call(gateway.directory.refresh)
    assert core.breaker_snapshots()["chat-model"].state.value == "half_open"
    client.portal.call(gateway.state_sync.sync)
    assert client.post("/v1/chat/completions", json=body, headers=admin).status_code == 200  # the probe
    assert gateway.breakers.status_of("chat-model") is None


def test_a_new_ingress_does_not_mistake_known_replicas_for_replacements(serve, tmp_path):
    app, gateway, core = make_app(tmp_path, serve, circuit_breaker_threshold=1, circuit_breaker_timeout_s=30,
                                  state_clock=Clock(1000.0))
    core.breaker_report("chat-model", False)  # opened before this ingress started
    with TestClient(app) as client:
        client.portal.call(gateway.directory.refresh)
    assert core.breaker_snapshots()["chat-model"].state.value == "open"
