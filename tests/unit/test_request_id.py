"""Request ids (serve_app/ingress/http/request_id.py): the rules, the middleware on a plain Starlette app
and in the ingress, and unexpected errors logged with one traceback (serve_app/ingress/http/errors.py).
No Ray cluster."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from ray.serve import context as serve_context
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from contract.errors import InvalidRequestError
from serve_app.ingress.http.errors import install_error_handlers
from serve_app.ingress.http.request_id import (
    MAX_REQUEST_ID_LENGTH,
    RequestIdMiddleware,
    effective_request_id,
    is_valid_request_id,
    new_request_id,
)
from tests.unit.fakes import make_app

VALID = [
    "test-6f1c2c1e-8a4b-4d8e-9a57-1f4c2d3e4f50",  # a uuid, prefixed
    "6f1c2c1e8a4b4d8e9a571f4c2d3e4f50",  # uuid4 hex
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # a ULID
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a W3C traceparent
    "aGVsbG8+/w==",  # base64
    "req_1.2:3",
    "a",
    "x" * MAX_REQUEST_ID_LENGTH,
]
INVALID = [
    "",
    "x" * (MAX_REQUEST_ID_LENGTH + 1),
    "x" * 300,
    "a b",
    "<script>",
    "a;b",
    "a,b",
    'a"b',
    "a\tb",
    "caf\u00e9",
    "a\\b",
    "%0d%0a",
]


@pytest.mark.parametrize("value", VALID)
def test_valid_ids_are_kept(value):
    assert is_valid_request_id(value)
    assert effective_request_id([value]) == value


@pytest.mark.parametrize("value", INVALID)
def test_invalid_ids_are_refused(value):
    assert not is_valid_request_id(value)
    with pytest.raises(InvalidRequestError) as refused:
        effective_request_id([value])
    assert refused.value.status_code == 400 and refused.value.code == "invalid_request_id"
    assert "x-request-id" in refused.value.message


def test_no_id_is_none_and_two_are_refused():
    assert effective_request_id([]) is None
    with pytest.raises(InvalidRequestError):
        effective_request_id(["one", "two"])  # the proxy would echo one and log the other


def test_new_ids_are_uuid4_hex_and_valid():
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) and is_valid_request_id(value) for value in ids)


# ---------------------------------------------------------------- the middleware, no Ray


def _seen(request: Request) -> JSONResponse:
    return JSONResponse({
        "state": request.state.request_id,
        "headers": request.headers.getlist("x-request-id"),
        "serve_context": serve_context._get_serve_request_context().request_id,
    })


def _own_header(_: Request) -> JSONResponse:
    return JSONResponse({}, headers={"x-request-id": "the-route-s-own"})


def _plain_app(calls: list[str], echo: bool = True) -> Starlette:
    def seen(request: Request) -> JSONResponse:
        calls.append(request.url.path)
        return _seen(request)

    app = Starlette(routes=[Route("/seen", seen), Route("/own", _own_header)])
    app.add_middleware(RequestIdMiddleware, echo=echo)
    return app


def test_a_valid_id_is_kept_and_returned_once():
    calls: list[str] = []
    with TestClient(_plain_app(calls)) as client:
        response = client.get("/seen", headers={"x-request-id": "test-abc.1"})
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["test-abc.1"]
    assert response.json() == {"state": "test-abc.1", "headers": ["test-abc.1"], "serve_context": "test-abc.1"}


def test_a_request_without_an_id_gets_a_new_one_everywhere():
    calls: list[str] = []
    with TestClient(_plain_app(calls)) as client:
        first, second = client.get("/seen"), client.get("/seen")
    (request_id,) = first.headers.get_list("x-request-id")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert first.json() == {"state": request_id, "headers": [request_id], "serve_context": request_id}
    assert second.headers["x-request-id"] != request_id


@pytest.mark.parametrize("headers", [
    [("x-request-id", "x" * 300)],
    [("x-request-id", "a b <c>")],
    [("x-request-id", "")],
    [("x-request-id", "one"), ("x-request-id", "two")],
])
def test_a_bad_id_is_a_400_with_one_fresh_id_and_the_app_is_not_called(headers):
    calls: list[str] = []
    with TestClient(_plain_app(calls)) as client:
        response = client.get("/seen", headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request_id" and error["type"] == "invalid_request_error"
    (request_id,) = response.headers.get_list("x-request-id")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert calls == []


def test_the_response_carries_exactly_one_id_even_if_the_app_sets_one():
    with TestClient(_plain_app([])) as client:
        response = client.get("/own", headers={"x-request-id": "mine"})
    assert response.headers.get_list("x-request-id") == ["mine"]


def test_behind_the_proxy_nothing_is_added_to_the_response():
    """echo=False (the ingress): Ray's proxy appends the id to every response itself."""
    calls: list[str] = []
    with TestClient(_plain_app(calls, echo=False)) as client:
        kept = client.get("/seen", headers={"x-request-id": "abc"})
        refused = client.get("/seen", headers={"x-request-id": "a b"})
    assert kept.json()["state"] == "abc" and "x-request-id" not in kept.headers
    assert refused.status_code == 400 and "x-request-id" not in refused.headers
    assert calls == ["/seen"]


def test_other_scopes_pass_through():
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(RequestIdMiddleware(app)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


# ---------------------------------------------------------------- in the ingress

MSG = [{"role": "user", "content": "hello"}]


@pytest.mark.models({"chat-model": "text-generation"})
def test_the_ingress_checks_the_id_first(tmp_path, serve):
    """Outermost: a bad id is a 400 before the auth middleware asks for a key."""
    app, _, _ = make_app(tmp_path, serve, enable_caching=False)
    with TestClient(app) as client:
        refused = client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG},
                              headers={"x-request-id": "<bad id>"})
        unauthenticated = client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG},
                                      headers={"x-request-id": "good-id"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request_id"
    assert unauthenticated.status_code == 401
    assert "x-request-id" not in refused.headers  # Ray's proxy adds it


# ---------------------------------------------------------------- unexpected errors log once


def _tracebacks(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.exc_info]


def _broken_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/bug")
    async def bug():
        raise RuntimeError("secret internal detail")

    @app.get("/fine")
    async def fine():
        return {"ok": True}

    @app.get("/mid-stream")
    async def mid_stream():
        async def body():
            yield b"partial"
            raise RuntimeError("broke mid-body")

        return StreamingResponse(body())

    class BrokenMiddleware:  # pure ASGI, as the ingress's are
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["query_string"] == b"break=1":
                raise ValueError("middleware bug")
            await self.app(scope, receive, send)

    app.add_middleware(BrokenMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app


@pytest.mark.parametrize("path", ["/bug", "/fine?break=1"])
def test_an_unexpected_error_is_a_500_logged_once_and_does_not_escape_to_ray(path, caplog):
    """An exception escaping the ASGI app would be logged again by Ray's replica ("Request
    failed.") and proxy; TestClient re-raises one that escapes."""
    with TestClient(_broken_app()) as client, caplog.at_level(logging.INFO, logger="ray.serve"):
        response = client.get(path, headers={"x-request-id": "err-1"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "internal_error" and "secret" not in response.text
    if path == "/bug":  # answered inside the middleware stack, so the id middleware adds its header
        assert response.headers.get_list("x-request-id") == ["err-1"]
    (record,) = _tracebacks(caplog)
    assert record.levelname == "ERROR"


def _admin_headers(state_dir) -> dict[str, str]:
    from serve_app.state.keys import read_admin_key_file

    key = read_admin_key_file(state_dir)
    assert key
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.models({"chat-model": "text-generation"})
def test_a_route_error_is_a_500_that_every_middleware_sees(tmp_path, caplog, serve):
    """In the ingress: the auth middleware adds its rate-limit headers to the 500 too."""
    app, gateway, _ = make_app(tmp_path, serve, enable_caching=False)

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug in the gateway")

    gateway.chat = broken
    admin = _admin_headers(tmp_path)
    with TestClient(app) as client, caplog.at_level(logging.INFO, logger="ray.serve"):
        response = client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG}, headers=admin)
    assert response.status_code == 500
    assert any(name.startswith("x-ratelimit-") for name in response.headers)
    assert len(_tracebacks(caplog)) == 1


def test_an_error_after_the_response_started_is_logged_once_and_the_response_left_incomplete(caplog):
    """No handler can answer it. It does not escape either: the app returns without the last
    body message, so the server breaks off the response (Ray's proxy closes the connection)."""
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/mid-stream", "raw_path": b"/mid-stream", "root_path": "", "query_string": b"",
             "headers": [], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        asyncio.run(_broken_app()(scope, receive, send))
    assert [m["type"] for m in sent][:2] == ["http.response.start", "http.response.body"]
    assert not any(m["type"] == "http.response.body" and not m.get("more_body", False) for m in sent)
    (record,) = _tracebacks(caplog)
    assert "broke mid-body" in str(record.exc_info[1])


def test_a_model_replica_failure_is_one_line_without_traceback_in_the_ingress(caplog):
    """The replica logged the traceback (with the request id); the ingress names the model."""
    from ray.exceptions import RayTaskError

    from serve_app.ingress.gateway.failures import classify_failure

    failure = RayTaskError("ModelServer.embed", "Traceback (most recent call last):\n  ...\nTypeError: boom", TypeError("boom"))
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        error, counts = classify_failure(failure, "tiny-bert", 5.0)
    assert error.status_code == 500 and counts
    (record,) = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is None
    assert "tiny-bert" in record.getMessage() and "Traceback" not in record.getMessage()
