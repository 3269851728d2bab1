"""A client that leaves before its answer: the request is cancelled down to the model call, and
recorded as 499 (access log, hf_server_requests_total), never as a 500 or an error. Driven as
raw ASGI calls over the real ingress app and the fakes, so the test decides when the client goes."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from fastapi.testclient import TestClient

from contract.protocol import ChatChunkChoice, ChatCompletionChunk, ChatDelta
from observability import catalogue
from serve_app.ingress.http.access_log import RAY_FLATTENED
from tests.unit.fakes import FakeModel, FakeServe, make_app
from tests.unit.test_gateway_metrics import FakeScraper, Sink

MSG = [{"role": "user", "content": "hello big world"}]
CHAT = "/v1/chat/completions"


class SlowModel(FakeModel):
    """Works on a chat or an embedding until cancelled, counting both."""

    def __init__(self, model_id: str, task: str):
        super().__init__(model_id, task)
        self.entered = self.stopped = 0
        self.request_timeout_s = 60.0

    async def _work(self):
        self.entered += 1
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.stopped += 1
            raise

    async def chat(self, request):
        await self._work()

    async def embed(self, request):
        await self._work()


class SlowStreamModel(SlowModel):
    """Streams its first chunk, then works until cancelled."""

    def chat_stream(self, request):
        model = self

        class Stream:
            async def _run(self):
                yield ChatCompletionChunk(id="c", created=1, model=model.model_id,
                                          choices=[ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))])
                await model._work()

            def __aiter__(self):
                return self._run()

            def cancel(self):
                model.cancelled += 1

        return Stream()


@pytest.fixture
def ingress(tmp_path, caplog):
    models = {"chat-model": SlowModel("chat-model", "text-generation"), "embed-model": SlowModel("embed-model", "embedding"),
              "quick-model": FakeModel("quick-model", "text-generation"),
              "stream-model": SlowStreamModel("stream-model", "text-generation")}
    sink = Sink()
    app, _, _ = make_app(tmp_path, FakeServe(models), enable_auth=False, metrics_sink=sink, scraper=FakeScraper())
    caplog.set_level(logging.INFO, logger="ray.serve.hfserve.access")
    with TestClient(app) as client:  # runs the app's lifespan; the calls below run on its loop
        yield client, app, models, sink, caplog


def _scope(path: str, body: bytes) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {},
    }


async def _until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def _request(app, path: str, payload: dict, model: SlowModel, *, how: str) -> tuple[list[dict], bool]:
    """Send a request; once the model works on it, the client leaves (`disconnect`), Serve
    cancels the request's task (`cancel`), or Serve ends the model call first (`cut`, a
    ServeCancelledModel), or Ray's Python proxy cancels its receive call as the client leaves
    (`fetch-cancelled`). What was sent back, and whether the call raised CancelledError."""
    body = json.dumps(payload).encode()
    gone, sent, read = asyncio.Event(), [], False

    async def receive() -> dict:
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        if how == "fetch-cancelled":
            from ray.exceptions import TaskCancelledError

            raise TaskCancelledError()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    call = asyncio.ensure_future(app(_scope(path, body), receive, send))
    await _until(lambda: model.entered == 1)
    if how == "cancel":
        call.cancel()
    elif how == "cut":
        model.cut.set()  # the request's own cancellation is still to come
    else:
        gone.set()
    try:
        async with asyncio.timeout(5):
            await call
    except asyncio.CancelledError:
        return sent, True
    return sent, False


def _access_lines(caplog) -> list[dict]:
    return [getattr(r, RAY_FLATTENED) for r in caplog.records if r.name == "ray.serve.hfserve.access"]


@pytest.mark.parametrize(("path", "model", "payload"), [
    (CHAT, "chat-model", {"model": "chat-model", "messages": MSG, "max_tokens": 1500}),
    ("/v1/embeddings", "embed-model", {"model": "embed-model", "input": ["a", "b"]}),
], ids=["chat", "embeddings"])
def test_a_client_that_leaves_cancels_the_model_call_and_is_logged_499(ingress, path, model, payload):
    client, app, models, sink, caplog = ingress
    sent, raised = client.portal.call(lambda: _request(app, path, payload, models[model], how="disconnect"))
    assert models[model].stopped == 1  # the model call was cancelled, not left to run
    assert sent == [] and not raised  # nothing to answer to a client that is gone
    (line,) = _access_lines(caplog)
    assert line["status"] == 499 and line["aborted"] is True and line["error_type"] is None
    assert line["endpoint"] == path
    assert sink.total(catalogue.REQUESTS, endpoint=path, status="499") == 1
    assert sink.total(catalogue.REQUESTS, endpoint=path) == 1  # and no 500 beside it
    assert sink.count(catalogue.ERRORS) == 0


def test_a_client_that_leaves_rays_python_proxy_is_a_499_too(ingress):
    """Ray's Python proxy cancels the call that fetches the client's messages as the client
    leaves: receive() raises TaskCancelledError instead of returning http.disconnect."""
    client, app, models, sink, caplog = ingress
    payload = {"model": "chat-model", "messages": MSG}
    sent, raised = client.portal.call(lambda: _request(app, CHAT, payload, models["chat-model"], how="fetch-cancelled"))
    assert models["chat-model"].stopped == 1 and sent == [] and not raised
    (line,) = _access_lines(caplog)
    assert line["status"] == 499 and line["aborted"] is True and line["error_type"] is None
    assert sink.total(catalogue.REQUESTS, status="499") == 1 and sink.total(catalogue.REQUESTS, status="500") == 0


def test_a_request_serve_cancels_is_499_too(ingress):
    """Serve cancels a request's task when it sees its client leave: the same record."""
    client, app, models, sink, caplog = ingress
    payload = {"model": "chat-model", "messages": MSG}
    sent, raised = client.portal.call(lambda: _request(app, CHAT, payload, models["chat-model"], how="cancel"))
    assert raised and sent == []
    assert models["chat-model"].stopped == 1
    (line,) = _access_lines(caplog)
    assert line["status"] == 499 and line["aborted"] is True
    assert sink.total(catalogue.REQUESTS, status="499") == 1 and sink.total(catalogue.REQUESTS, status="500") == 0


class ServeCancelledModel(SlowModel):
    """Its call ends as Serve ends a model call it cancels because the request's client left:
    RequestCancelledError in the awaiter, before the request's own task is cancelled."""

    def __init__(self, model_id: str, task: str):
        super().__init__(model_id, task)
        self.cut = asyncio.Event()

    async def _work(self):
        from ray.serve.exceptions import RequestCancelledError

        self.entered += 1
        await self.cut.wait()
        self.stopped += 1
        raise RequestCancelledError("child")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_serve_cancelling_the_model_call_first_is_a_499_not_a_failure(tmp_path, caplog, stream):
    """Serve cancels a leaving client's model calls on its own thread: the call may end with
    RequestCancelledError before the request's task is cancelled. That is the client's choice,
    not the model's failure: no 500, and nothing counted against the model's breaker."""
    model = ServeCancelledModel("chat-model", "text-generation")
    if stream:
        model = type("Streaming", (ServeCancelledModel, SlowStreamModel), {})("chat-model", "text-generation")
    sink = Sink()
    app, _, core = make_app(tmp_path, FakeServe({"chat-model": model}), enable_auth=False, metrics_sink=sink,
                            scraper=FakeScraper())
    caplog.set_level(logging.INFO, logger="ray.serve.hfserve.access")

    payload = {"model": "chat-model", "messages": MSG, "stream": stream}
    with TestClient(app) as client:
        sent, raised = client.portal.call(lambda: _request(app, CHAT, payload, model, how="cut"))
    (line,) = _access_lines(caplog)
    assert line["error_type"] is None and sink.count(catalogue.ERRORS) == 0
    assert sink.total(catalogue.REQUESTS, status="500") == 0
    if stream:  # its 200 had started: it stays a 200, cut short
        assert sent[0]["status"] == 200 and line["status"] == 200 and line["aborted"] is True
    else:
        assert raised and sent == [] and line["status"] == 499 and sink.total(catalogue.REQUESTS, status="499") == 1
    assert core.breaker_snapshots().get("chat-model") is None or core.breaker_snapshots()["chat-model"].consecutive_failures == 0


def test_a_call_serve_cancelled_as_the_disconnect_arrived_is_a_499(caplog):
    """Serve's cancellation of the call and the client's disconnect land in the same turn of
    the loop: the app has ended cancelled before the middleware sees the disconnect."""
    from observability.recorder import Recorder
    from serve_app.ingress.http.access_log import AccessLogMiddleware
    from serve_app.ingress.http.middleware import DisconnectMiddleware

    sink = Sink()
    both = asyncio.Event()

    async def app(scope, receive, send):
        await both.wait()
        raise asyncio.CancelledError  # as the gateway ends a call Serve cancelled

    stack = AccessLogMiddleware(DisconnectMiddleware(app), metrics=Recorder(sink=sink))
    caplog.set_level(logging.INFO, logger="ray.serve.hfserve.access")
    body = json.dumps({"model": "chat-model", "messages": MSG}).encode()

    async def run() -> tuple[list[dict], bool]:
        read, sent = False, []

        async def receive() -> dict:
            nonlocal read
            if not read:
                read = True
                return {"type": "http.request", "body": body, "more_body": False}
            await both.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        call = asyncio.ensure_future(stack(_scope(CHAT, body), receive, send))
        await asyncio.sleep(0)
        both.set()
        try:
            async with asyncio.timeout(5):
                await call
        except asyncio.CancelledError:
            return sent, True
        return sent, False

    sent, _ = asyncio.run(run())
    (line,) = _access_lines(caplog)
    assert sent == [] and line["status"] == 499 and line["aborted"] is True and line["error_type"] is None
    assert sink.total(catalogue.REQUESTS, status="499") == 1 and sink.total(catalogue.REQUESTS, status="500") == 0


def test_a_client_that_leaves_a_stream_stops_it_and_keeps_its_200(ingress):
    client, app, models, sink, caplog = ingress
    payload = {"model": "stream-model", "messages": MSG, "stream": True}
    sent, raised = client.portal.call(lambda: _request(app, CHAT, payload, models["stream-model"], how="disconnect"))
    assert not raised and sent[0]["status"] == 200 and b"assistant" in sent[1]["body"]
    assert models["stream-model"].stopped == 1 and models["stream-model"].cancelled == 1  # the model call too
    (line,) = _access_lines(caplog)
    assert line["status"] == 200 and line["aborted"] is True
    assert sink.total(catalogue.REQUESTS, status="499") == 0


def test_requests_whose_client_stays_are_answered_as_before(ingress):
    client, app, models, sink, caplog = ingress
    response = client.post(CHAT, json={"model": "quick-model", "messages": MSG})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "hello big world"
    with client.stream("POST", CHAT, json={"model": "quick-model", "messages": MSG, "stream": True}) as stream:
        assert stream.status_code == 200
        assert [line for line in stream.iter_lines() if line.startswith("data: ")][-1] == "data: [DONE]"
    assert [line["status"] for line in _access_lines(caplog)] == [200, 200]
    assert not any(line["aborted"] for line in _access_lines(caplog))


@pytest.mark.models({"chat-model": "text-generation"})
def test_a_body_that_stops_arriving_is_a_408_that_closes_the_connection(tmp_path, serve):
    """A Content-Length larger than what is sent held the connection until the client gave up."""
    app, _, _ = make_app(tmp_path, serve, enable_auth=False, request_body_timeout_s=0.2)
    scope = _scope(CHAT, b"x" * 100)  # announces 100 bytes, sends 10
    sent: list[dict] = []

    async def run() -> None:
        parts = [{"type": "http.request", "body": b'{"model": ', "more_body": True}]

        async def receive() -> dict:
            if parts:
                return parts.pop()
            await asyncio.Event().wait()  # the rest never comes
            raise AssertionError("unreachable")

        async def send(message: dict) -> None:
            sent.append(message)

        async with asyncio.timeout(5):
            await app(scope, receive, send)

    with TestClient(app) as client:
        client.portal.call(run)
    start, body = sent[0], json.loads(b"".join(message.get("body", b"") for message in sent[1:]))
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert body["error"]["code"] == "request_timeout" and body["error"]["type"] == "invalid_request_error"
