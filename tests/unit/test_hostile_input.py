"""Hostile input through the real ingress app (over fakes and an in-process state core): lone
surrogates, oversized headers, too many inputs, budgets no key could ever afford. Each is a
clear 4xx or is served, never a 500, and nothing is stored or counted that should not be."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from serve_app.state.keys import read_admin_key_file
from tests.unit.fakes import make_app

LONE = "\\ud800"  # as JSON writes it: a high surrogate without its low half


@pytest.fixture
def app(serve, tmp_path):
    app, gateway, core = make_app(tmp_path, serve, circuit_breaker_threshold=2, max_embedding_inputs=4,
                                  max_header_count=30, max_header_bytes=4096)
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
        yield client, gateway, core, admin


def post_raw(client, path, raw: str, headers):
    return client.post(path, content=raw.encode(), headers={**headers, "Content-Type": "application/json"})


@pytest.mark.parametrize(
    "path,raw",
    [
        ("/v1/chat/completions", '{"model": "chat-model", "messages": [{"role": "user", "content": "a%sb"}]}'),
        ("/v1/chat/completions", '{"model": "chat-model", "messages": [{"role": "user", "content": [{"type": "text", "text": "a%sb"}]}]}'),
        ("/v1/embeddings", '{"model": "embed-model", "input": "a%sb"}'),
        ("/v1/embeddings", '{"model": "embed-model", "input": "a%sb", "x%s": "y%s"}'),
        ("/v1/embeddings", '{"model": "embed-model", "input": ["a%sb", "c"], "user": "%s"}'),
    ],
)
def test_lone_surrogates_are_replaced_not_a_500(app, serve, path, raw):
    client, *_, admin = app
    response = post_raw(client, path, raw.replace("%s", LONE), admin)
    assert response.status_code == 200, response.text
    if path == "/v1/chat/completions":
        assert response.json()["choices"][0]["message"]["content"] == "a\ufffdb"
    if path == "/v1/embeddings":
        assert serve.models["embed-model"].embedded[0] == "a\ufffdb"


def test_a_valid_surrogate_pair_is_kept(app):
    client, *_, admin = app
    raw = '{"model": "chat-model", "messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}]}'
    response = post_raw(client, "/v1/chat/completions", raw, admin)
    assert response.json()["choices"][0]["message"]["content"] == "smile \U0001F600"


def test_a_lone_surrogate_in_a_key_name_is_replaced_then_validated(app):
    client, _, core, admin = app
    before = len(core.store.list())
    response = post_raw(client, "/admin/keys", '{"name": "bob%s"}'.replace("%s", LONE), admin)
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"
    assert len(core.store.list()) == before


def test_one_users_bad_input_never_opens_the_breaker_for_others(app, serve):
    client, gateway, core, admin = app
    alice = client.post("/admin/keys", json={"name": "alice"}, headers=admin).json()["key"]
    hostile = {"Authorization": f"Bearer {alice}"}
    bad_bodies = [
        '{"model": "chat-model", "messages": [{"role": "user", "content": "%s"}], "max_tokens": 1000000000000}',
        '{"model": "chat-model", "messages": [{"role": "user", "content": "TOO LONG"}]}',
        '{"model": "chat-model", "messages": [{"role": "user", "content": "x"}], "n": 0}',
        '{"model": "chat-model", "messages": []}',
        '{"model": "chat-model", "messages": [{"role": "user", "content": "%s"}], "top_logprobs": 21}',
    ]
    for _ in range(3):
        for raw in bad_bodies:
            response = post_raw(client, "/v1/chat/completions", raw.replace("%s", LONE), hostile)
            assert 400 <= response.status_code < 500, response.text
    assert "chat-model" not in core.breaker_snapshots() or core.breaker_snapshots()["chat-model"].consecutive_failures == 0
    ok = client.post("/v1/chat/completions", json={"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]},
                     headers=admin)
    assert ok.status_code == 200


def test_too_many_or_too_large_headers_are_431(app):
    client, *_, admin = app
    many = {**admin, **{f"x-h{i}": "v" for i in range(40)}}
    response = client.get("/v1/models", headers=many)
    assert response.status_code == 431 and response.json()["error"]["code"] == "request_header_fields_too_large"
    large = client.get("/health", headers={"x-big": "a" * 5000})
    assert large.status_code == 431
    assert client.get("/v1/models", headers={**admin, "x-ok": "a" * 1000}).status_code == 200


def test_too_many_embedding_inputs_is_400_naming_input(app, serve):
    client, *_, admin = app
    response = client.post("/v1/embeddings", json={"model": "embed-model", "input": ["a", "b", "c", "d", "e"]}, headers=admin)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input" and "at most 4" in response.json()["error"]["message"]
    assert serve.models["embed-model"].calls == 0


def test_a_budget_over_the_keys_whole_tpm_is_400_not_429(app, serve):
    client, *_, admin = app
    key = client.post("/admin/keys", json={"name": "small", "tpm": 1000}, headers=admin).json()["key"]
    body = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12}
    response = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and error["code"] == "request_too_large" and "1000 tokens per minute" in error["message"]
    chat = client.post("/v1/chat/completions", json={**body, "max_tokens": None, "max_completion_tokens": 5000},
                       headers={"Authorization": f"Bearer {key}"})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "max_completion_tokens"
    big_input = client.post("/v1/embeddings", json={"model": "embed-model", "input": "word " * 2000},
                            headers={"Authorization": f"Bearer {key}"})
    assert big_input.status_code == 400 and big_input.json()["error"]["param"] == "input"
    assert serve.models["chat-model"].calls == 0 and serve.models["embed-model"].calls == 0


def test_unknown_field_names_are_logged_truncated(app, caplog):
    client, *_, admin = app
    body = {"model": "embed-model", "input": "hi", "f" * 100_000: "v" * 100_000}
    body.update({f"extra{i}": i for i in range(20)})
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        assert client.post("/v1/embeddings", json=body, headers=admin).status_code == 200
    logged = "\n".join(record.getMessage() for record in caplog.records if "unknown request fields" in record.getMessage())
    assert logged and len(logged) < 2000 and "v" * 100 not in logged and "more" in logged


def test_an_unknown_generation_field_is_a_400_that_names_it_briefly(app, serve):
    client, *_, admin = app
    body = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "f" * 100_000: "v"}
    response = client.post("/v1/chat/completions", json=body, headers=admin)
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "unknown_parameter" and error["param"] == "f" * 64
    assert len(response.text) < 1000 and serve.models["chat-model"].calls == 0


def test_405_carries_allow(app):
    client, *_, admin = app
    response = client.delete("/v1/chat/completions", headers=admin)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_replica_client_errors_log_one_warning_line():
    from contract.errors import ContextLengthExceededError, InternalServerError
    from deployments.logs import ClientErrorsAsWarnings

    logger = logging.getLogger("test.replica")
    logger.addFilter(ClientErrorsAsWarnings())
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    for error in (ContextLengthExceededError("too long", param="messages"), InternalServerError("engine broke")):
        try:
            raise error
        except Exception:
            logger.exception("Request failed.")
    client, server = records
    assert client.levelname == "WARNING" and client.exc_info is None
    assert client.getMessage() == "Request refused: 400 context_length_exceeded: too long"
    assert server.levelname == "ERROR" and server.exc_info is not None  # unexpected: the traceback stays
    json.dumps(client.getMessage())
