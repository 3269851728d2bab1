"""Request ids and what the logs hold, on the real server: the `x-request-id` a client sends is
returned once and is the `request_id` of the model replica's log lines for that request; a bad
one is a 400; a missing one is made by Serve's proxy; no API key ever reaches a log file; an
unexpected error in a model replica is one traceback."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve
from ray.serve import context as serve_context

from serve_app.ingress.http.request_id import is_valid_request_id


def admin(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_key()}"}


def create_key(server) -> tuple[str, str]:
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        response = http.post("/admin/keys", json={"name": "request-ids"}, headers=admin(server))
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def _logs_dir() -> Path:
    node = getattr(ray._private.worker, "_global_node", None) or ray._private.worker.global_worker.node
    return Path(node.get_session_dir_path()) / "logs"


def _serve_records(pattern: str) -> list[tuple[str, dict]]:
    """(file name, record) for every JSON line of Serve's logs matching `pattern`."""
    records = []
    for path in sorted((_logs_dir() / "serve").glob(pattern)):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append((path.name, record))
    return records


def _eventually(probe: Callable[[], list], timeout_s: float = 10.0) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _with_id(request_id: str, pattern: str) -> list[tuple[str, dict]]:
    return [(name, record) for name, record in _serve_records(pattern) if record.get("request_id") == request_id]


def test_a_valid_id_is_returned_once_and_tags_the_model_replica_s_lines(server):
    request_id = f"test-{uuid.uuid4()}"
    with server.http() as http:
        ok = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "hello"}, headers={"x-request-id": request_id})
        # A client error raised in the model replica: one WARNING line there, through the handle call.
        refused = http.post("/v1/completions", json={"model": "tiny-llama", "prompt": [1, 2, 999999]},
                            headers={"x-request-id": request_id})
    assert ok.status_code == 200, ok.text
    assert ok.headers.get_list("x-request-id") == [request_id]
    assert refused.status_code == 400, refused.text
    assert refused.headers.get_list("x-request-id") == [request_id]
    # Each line is written as its request ends, after the client has its answer: wait for the one wanted.
    replica = _eventually(lambda: [(name, record) for name, record in _with_id(request_id, "replica_tiny-llama_ModelServer_*.log")
                                   if "Request refused: 400" in record["message"]])
    assert replica, _with_id(request_id, "replica_tiny-llama_ModelServer_*.log")
    ingress = _eventually(lambda: [(name, record) for name, record in _with_id(request_id, "replica_ingress_Ingress_*.log")
                                   if record["message"].startswith("POST /v1/completions 400")])
    assert ingress, _with_id(request_id, "replica_ingress_Ingress_*.log")


@pytest.mark.parametrize("headers", [
    [("x-request-id", "x" * 300)],
    [("x-request-id", "has spaces <and> brackets")],
    [("x-request-id", "")],
    [("x-request-id", "one"), ("x-request-id", "two")],
], ids=["too-long", "odd-characters", "empty", "twice"])
def test_an_invalid_id_is_a_400_with_one_id_header(server, headers):
    with server.http() as http:
        response = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "hello"}, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request_id"
    # Ray's proxy returns the (first) id it received, and only that one.
    assert response.headers.get_list("x-request-id") == [headers[0][1]]


def test_a_request_without_an_id_gets_a_generated_one(server):
    with server.http() as http:
        first = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "hello"})
        second = http.get("/health")
    assert first.status_code == 200 and second.status_code == 200
    (first_id,) = first.headers.get_list("x-request-id")
    (second_id,) = second.headers.get_list("x-request-id")
    assert is_valid_request_id(first_id) and is_valid_request_id(second_id) and first_id != second_id


def test_no_api_key_appears_in_any_log_file(server):
    good, _ = create_key(server)
    revoked, revoked_id = create_key(server)
    never_issued = "hf_" + secrets.token_urlsafe(32)
    malformed = "sk-" + secrets.token_urlsafe(32)
    body = {"model": "tiny-bert", "input": "hello"}
    with httpx.Client(base_url=server.gateway_url, timeout=60) as http:
        assert http.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {good}"}).status_code == 200
        assert http.post("/v1/embeddings", json=body, headers={"X-API-Key": good}).status_code == 200
        assert http.get("/v1/models", headers={"Authorization": f"Bearer {revoked}"}).status_code == 200
        assert http.delete(f"/admin/keys/{revoked_id}", headers=admin(server)).status_code == 200
        deadline, streak = time.monotonic() + 10, 0
        while streak < 8:  # 8 refusals in a row: both gateway replicas know
            refused = http.get("/v1/models", headers={"Authorization": f"Bearer {revoked}"}).status_code == 401
            streak = streak + 1 if refused else 0
            assert time.monotonic() < deadline, "the revocation did not reach the ingress"
        for headers in ({"Authorization": f"Bearer {revoked}"}, {"X-API-Key": revoked},
                        {"Authorization": f"Bearer {never_issued}"}, {"X-API-Key": never_issued},
                        {"Authorization": f"Bearer {malformed}"}, {"X-API-Key": malformed},
                        {"Authorization": good}):  # no "Bearer": malformed
            assert http.post("/v1/embeddings", json=body, headers=headers).status_code == 401, list(headers)
        # a refused request id, a 404 and a validation error, each with a good key
        assert http.post("/v1/embeddings", json=body, headers={"X-API-Key": good, "x-request-id": "<bad>"}).status_code == 400
        assert http.post("/v1/embeddings", json={**body, "model": "nope"}, headers={"X-API-Key": good}).status_code == 404
        assert http.post("/v1/embeddings", json={"model": "tiny-bert"}, headers={"X-API-Key": good}).status_code == 400
        assert http.get("/status", headers=admin(server)).status_code == 200
        # A last request, marked: each line is written as its request ends, so once the marked
        # line is in a gateway log, writing has caught up with the requests above.
        marker = f"last-{uuid.uuid4()}"
        assert http.post("/v1/embeddings", json={**body, "model": "nope"},
                         headers={"X-API-Key": good, "x-request-id": marker}).status_code == 404
    assert _eventually(lambda: _with_id(marker, "replica_gateway_Ingress_*.log")), "the marked request was never logged"

    secrets_ = {"good": good, "revoked": revoked, "never issued": never_issued, "malformed": malformed,
                "admin": server.admin_key()}
    needles = {}
    for name, key in secrets_.items():
        assert len(key) >= 40, name
        needles[f"{name} key"] = key.encode()
        needles[f"{name} key without its prefix"] = key[3:].encode()
        needles[f"part of the {name} key"] = key[11:35].encode()
    files = [path for path in _logs_dir().rglob("*") if path.is_file()]
    assert any(path.parent.name == "serve" for path in files) and any(path.name.startswith("worker-") for path in files)
    found = {f"{name} in {path.relative_to(_logs_dir())}" for path in files for name, needle in needles.items()
             if needle in path.read_bytes()}
    assert not found, sorted(found)


def test_an_unexpected_error_in_a_model_replica_is_one_traceback(server):
    """A bug in a replica (here: a heartbeat period that is not a number) is logged with its
    traceback once, by Serve in that replica, tagged with the caller's request id."""
    request_id = f"test-{uuid.uuid4()}"
    token = serve_context._serve_request_context.set(serve_context._RequestContext(request_id=request_id))
    try:
        handle = serve.get_app_handle("tiny-bert").options(stream=True)
        stream = handle.call_with_heartbeats.remote("embed", {"model": "tiny-bert", "input": "x"}, heartbeat_s="soon")
        with pytest.raises(Exception, match="TypeError|not supported"):
            list(stream)
    finally:
        serve_context._serve_request_context.reset(token)

    def tracebacks() -> list[tuple[str, dict]]:
        return [(name, record) for name, record in _with_id(request_id, "*.log")
                if "Traceback" in (record.get("exc_text") or "") + record.get("message", "")]

    found = _eventually(tracebacks)
    # A window in which a second traceback would show: waiting is the thing under test here
    # (there is no event that says "nothing more will be logged").
    time.sleep(1)
    found = tracebacks()
    assert len(found) == 1, found
    (name, record), = found
    assert name.startswith("replica_tiny-bert_ModelServer_") and record["levelname"] == "ERROR"
    error = b"'>' not supported between instances of 'str' and 'float'"
    assert error.decode() in record["exc_text"]
    # Elsewhere, at most the copy Serve writes of each line to the replica's stderr file
    # (RAY_SERVE_LOG_TO_STDERR, on by default): no other process logged it.
    elsewhere = [path for path in _logs_dir().rglob("*") if path.is_file() and path.parent.name != "serve"
                 for _ in range(path.read_bytes().count(error))]
    assert len(elsewhere) <= 1 and all(path.name.startswith("worker-") and path.suffix == ".err" for path in elsewhere), elsewhere
