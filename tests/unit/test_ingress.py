"""The HTTP layer with a fake model directory: routing, error rendering, SSE framing,
body limits, readiness. No Ray."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from serve_app.ingress.model_directory import AppState
from tests.unit.fakes import FakeModel, make_app

MSG = [{"role": "user", "content": "hello big world"}]


@pytest.fixture
def client(serve, tmp_path):
    app, _, _ = make_app(tmp_path, serve, max_request_body_bytes=2048, enable_auth=False, enable_caching=False)
    with TestClient(app) as test_client:
        yield test_client


def test_chat_routes_to_the_model(client):
    response = client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["choices"][0]["message"]["content"] == "hello big world"


def test_stream_is_sse_ending_with_done(client, serve):
    with client.stream("POST", "/v1/chat/completions", json={"model": "chat-model", "messages": MSG, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    words = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert words == ["", "hello", " big", " world", None]
    assert serve.models["chat-model"].cancelled == 1  # always released when the stream ends


def test_errors_raised_before_the_first_chunk_are_real_status_codes(client):
    body = {"model": "chat-model", "messages": [{"role": "user", "content": "TOO LONG"}], "stream": True}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_model_is_404(client):
    response = client.post("/v1/chat/completions", json={"model": "ghost", "messages": MSG})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "The model 'ghost' does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found",
    }


def test_wrong_task_is_400_without_calling_the_model(client):
    response = client.post("/v1/embeddings", json={"model": "chat-model", "input": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


def test_validation_errors_are_400_naming_the_param(client):
    response = client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG, "n": 0})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"


def test_body_limit(client):
    big = {"model": "chat-model", "messages": [{"role": "user", "content": "x" * 4000}]}
    response = client.post("/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_models_and_health(client):
    models = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["chat-model", "embed-model"]
    assert models[0]["created"] == 123 and models[0]["task"] == "text-generation"
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/ready").status_code == 200


def test_ready_names_models_that_are_not_ready(serve, tmp_path):
    serve.states["embed-model"] = AppState("embed-model", "DEPLOYING")
    serve.states["broken"] = AppState("broken", "DEPLOY_FAILED", "ImportError: no module")
    serve.models["broken"] = FakeModel("broken", "embedding")
    app, _, _ = make_app(tmp_path, serve, enable_auth=False)
    with TestClient(app) as client:
        response = client.get("/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["not_ready"] == ["broken", "embed-model"]
        assert body["models"] == {"broken": "failed", "chat-model": "ready", "embed-model": "loading"}
        assert body["error"]["code"] == "models_not_ready"
        refused = client.post("/v1/embeddings", json={"model": "embed-model", "input": "x"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert "loading" in refused.json()["error"]["message"]


def test_a_model_deployed_later_is_found_without_waiting_for_the_refresh(serve, tmp_path):
    now = [1000.0]
    app, _, _ = make_app(tmp_path, serve, enable_auth=False, clock=lambda: now[0])
    with TestClient(app) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["chat-model", "embed-model"]
        now[0] += 0.2
        serve.models["late"] = FakeModel("late", "text-generation")
        serve.states["late"] = AppState("late", "RUNNING")
        response = client.post("/v1/chat/completions", json={"model": "late", "messages": MSG})
        assert response.status_code == 200


def test_unhandled_errors_are_a_generic_500(serve, tmp_path):
    async def broken_chat(request):
        raise RuntimeError("secret internal detail")

    serve.models["chat-model"].chat = broken_chat
    app, _, _ = make_app(tmp_path, serve, enable_auth=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG})
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"]["type"] == "internal_error"


class _RecordingHandle:
    """Stands in for a DeploymentHandle: records the options each derived handle was made with."""

    def __init__(self, options: dict | None = None):
        self.opts = options or {}

    def options(self, **kwargs):
        return _RecordingHandle({**self.opts, **kwargs})


@pytest.mark.parametrize("over_grpc", [True, False])
def test_model_calls_go_over_grpc_unless_switched_off(over_grpc):
    from contract.ingress_args import IngressArgs
    from serve_app.ingress.serve_models import ServeModelClient

    assert IngressArgs().model_calls_over_grpc is True  # the default: Serve's inter-deployment gRPC
    client = ServeModelClient(_RecordingHandle(), over_grpc=over_grpc)
    by_reference = {} if over_grpc is False else {"_by_reference": False}
    assert client._handle.opts == by_reference  # unary calls
    assert client._streaming.opts == {**by_reference, "stream": True}  # streams and heartbeat calls
