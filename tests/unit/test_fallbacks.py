"""Model fallbacks (serve_app/ingress/gateway/fallbacks.py) over the fakes: when a model cannot
serve a request, its fallbacks do, in order, for keys that may use them; the answer, the access
log, the metrics and the usage say so. And the config checks: a fallback of another task, an
unknown model or the model itself is refused naming the field, at deploy and at a run-time load."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest
from ray.serve.exceptions import BackPressureError

from contract.config import FallbackConfigError, ModelAppArgs, check_fallbacks
from contract.errors import (
    APIError,
    CircuitOpenError,
    ContextLengthExceededError,
    GatewayTimeoutError,
    InternalServerError,
    ModelNotFoundError,
    ModelOverloadedError,
    ModelStartingError,
    ServiceUnavailableError,
)
from observability import catalogue
from serve_app.ingress.gateway.fallbacks import refusal_reason, unready_reason
from serve_app.ingress.http.access_log import RAY_FLATTENED
from serve_app.ingress.model_directory import AppState
from serve_app.model_apps import check_config_fallbacks
from tests.unit.fakes import admin_client
from tests.unit.test_gateway import bearer, new_key
from tests.unit.test_gateway_metrics import Sink

MODELS = {"chat-a": "text-generation", "chat-b": "text-generation", "chat-c": "text-generation",
          "embed-a": "embedding", "embed-b": "embedding"}
pytestmark = pytest.mark.models(MODELS)
HEADER = "x-hfserve-fallback"
THRESHOLD = 2  # circuit_breaker_threshold


def chat(model: str, text: str = "hello there", **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 1, **fields}


@pytest.fixture
def gw(serve, tmp_path):
    """(client, state core, admin headers, metrics sink): chat-a falls back to chat-b, or to chat-c
    for a context too long; chat-b to chat-c; embed-a to embed-b."""
    serve.models["chat-a"].fallbacks = ["chat-b"]
    serve.models["chat-a"].context_fallbacks = ["chat-c"]
    serve.models["chat-b"].fallbacks = ["chat-c"]
    serve.models["embed-a"].fallbacks = ["embed-b"]
    sink = Sink()
    with admin_client(tmp_path, serve, metrics_sink=sink, circuit_breaker_threshold=THRESHOLD,
                      circuit_breaker_timeout_s=30, aliases={"chat": "chat-a"}) as (client, core, admin):
        yield client, core, admin, sink


def open_breaker(client, core, model: str) -> None:
    for _ in range(THRESHOLD):
        core.breaker_report(model, False)  # as when Serve reports the replicas lost
    client.portal.call(client.gateway.state_sync.sync)  # this ingress's copy: open


def access_lines(caplog) -> list[dict]:
    return [getattr(r, RAY_FLATTENED) for r in caplog.records if r.name == "ray.serve.hfserve.access"]


def sse_events(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]


# ----------------------------------------------------------------------------- the request path

@pytest.mark.parametrize(("path", "body", "asked", "served"), [
    ("/v1/chat/completions", chat("chat-a"), "chat-a", "chat-b"),
    ("/v1/embeddings", {"model": "embed-a", "input": "hello"}, "embed-a", "embed-b"),
])
def test_an_open_breaker_sends_the_request_to_the_fallback_and_everything_counts_the_one_that_served(
        gw, serve, caplog, path, body, asked, served):
    client, core, admin, sink = gw
    key, key_id = new_key(client, admin)
    open_breaker(client, core, asked)
    caplog.set_level(logging.INFO, logger="ray.serve.hfserve.access")
    response = client.post(path, json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    assert response.json()["model"] == served
    assert response.headers[HEADER] == asked
    assert serve.models[asked].calls == 0 and serve.models[served].calls == 1
    assert sink.total(catalogue.FALLBACKS, model=asked, fallback=served, reason="circuit_open") == 1
    assert sink.total(catalogue.REQUESTS, model=served, status="200") == 1
    assert sink.total(catalogue.REQUESTS, model=asked) == 0
    (line,) = [line for line in access_lines(caplog) if line["endpoint"] == path]
    assert (line["model"], line["fallback_from"], line["status"]) == (served, asked, 200)
    client.portal.call(client.gateway.usage.flush)
    rows = client.get(f"/admin/usage?key={key_id}&group_by=model", headers=admin).json()["data"]
    assert [(row["model"], row["requests"]) for row in rows] == [(served, 1)]
    assert rows[0]["prompt_tokens"] > 0


def test_a_key_that_may_not_use_the_fallback_gets_the_models_own_error(gw, serve):
    client, core, admin, sink = gw
    key, _ = new_key(client, admin, models=["chat-a"])
    open_breaker(client, core, "chat-a")
    response = client.post("/v1/chat/completions", json=chat("chat-a"), headers=bearer(key))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_unavailable"
    assert "circuit breaker" in response.json()["error"]["message"]
    assert int(response.headers["retry-after"]) >= 1 and HEADER not in response.headers
    assert serve.models["chat-b"].calls == 0
    assert sink.total(catalogue.REQUESTS, model="chat-a", status="503") == 1  # the model asked for, not the fallback
    assert sink.total(catalogue.FALLBACKS) == 0


def test_a_model_whose_breaker_is_open_costs_the_key_no_request(gw):
    client, core, admin, _ = gw
    key, _ = new_key(client, admin, rpm=1)  # one request: the fallback's
    open_breaker(client, core, "chat-a")
    response = client.post("/v1/chat/completions", json=chat("chat-a"), headers=bearer(key))
    assert response.status_code == 200 and response.json()["model"] == "chat-b"


def test_a_fallbacks_own_fallbacks_are_not_followed_and_none_serving_gives_the_first_error(gw, serve):
    client, core, admin, _ = gw
    open_breaker(client, core, "chat-a")
    open_breaker(client, core, "chat-b")  # chat-b would fall back to chat-c: not for chat-a's request
    response = client.post("/v1/chat/completions", json=chat("chat-a"), headers=admin)
    assert response.status_code == 503 and "'chat-a'" in response.json()["error"]["message"]
    assert serve.models["chat-c"].calls == 0


def test_an_alias_is_named_in_the_header(gw):
    client, core, admin, _ = gw
    open_breaker(client, core, "chat-a")
    response = client.post("/v1/chat/completions", json=chat("chat"), headers=admin)
    assert response.status_code == 200 and response.json()["model"] == "chat-b"
    assert response.headers[HEADER] == "chat"  # the name the client sent


def test_a_stream_falls_back_before_its_first_chunk(gw, serve):
    client, core, admin, _ = gw
    open_breaker(client, core, "chat-a")
    with client.stream("POST", "/v1/chat/completions", json=chat("chat-a", stream=True), headers=admin) as response:
        assert response.status_code == 200 and response.headers[HEADER] == "chat-a"
        events = sse_events(response)
    assert events and {event["model"] for event in events} == {"chat-b"}
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == "hello there"


def fill_queue(model) -> None:
    """The model's calls, whole and streamed, refused as Serve refuses them past its queue."""

    async def refused(request):
        model.calls += 1
        raise BackPressureError(num_queued_requests=8, max_queued_requests=8)

    def refused_stream(request):
        class Stream:
            def __aiter__(self):
                return self

            async def __anext__(self):
                raise BackPressureError(num_queued_requests=8, max_queued_requests=8)

            def cancel(self):
                pass

        return Stream()

    model.chat, model.chat_stream = refused, refused_stream


def test_a_full_queue_falls_back_for_a_whole_answer_and_a_stream(gw, serve):
    client, _, admin, sink = gw
    fill_queue(serve.models["chat-a"])
    response = client.post("/v1/chat/completions", json=chat("chat-a"), headers=admin)
    assert response.status_code == 200 and response.json()["model"] == "chat-b"
    with client.stream("POST", "/v1/chat/completions", json=chat("chat-a", stream=True), headers=admin) as streamed:
        assert streamed.status_code == 200 and streamed.headers[HEADER] == "chat-a"
        assert {event["model"] for event in sse_events(streamed)} == {"chat-b"}
    assert sink.total(catalogue.FALLBACKS, model="chat-a", fallback="chat-b", reason="overloaded") == 2


def test_a_model_whose_queue_is_full_costs_the_key_no_request(gw, serve):
    client, _, admin, _ = gw
    key, _ = new_key(client, admin, rpm=2)  # two requests: the fallback's, whole and streamed
    fill_queue(serve.models["chat-a"])
    response = client.post("/v1/chat/completions", json=chat("chat-a"), headers=bearer(key))
    assert response.status_code == 200 and response.json()["model"] == "chat-b"
    with client.stream("POST", "/v1/chat/completions", json=chat("chat-a", stream=True),
                       headers=bearer(key)) as streamed:
        assert streamed.status_code == 200 and {event["model"] for event in sse_events(streamed)} == {"chat-b"}
    third = client.post("/v1/chat/completions", json=chat("chat-a"), headers=bearer(key))
    assert third.status_code == 429 and "requests per min" in third.json()["error"]["message"]
    assert serve.models["chat-b"].calls == 2


def test_a_stream_that_fails_after_its_first_chunk_is_not_retried(gw, serve):
    client, _, admin, sink = gw
    model = serve.models["chat-a"]
    original = model.chat_stream

    def fails_after_the_first_chunk(request):
        stream = original(request)

        async def chunks():
            yield await stream.__aiter__().__anext__()
            raise ModelOverloadedError("The queue is full.")  # a refusal that would fall back before a chunk

        class Stream:
            def __aiter__(self):
                return chunks()

            def cancel(self):
                stream.cancel()

        return Stream()

    model.chat_stream = fails_after_the_first_chunk
    with client.stream("POST", "/v1/chat/completions", json=chat("chat-a", stream=True), headers=admin) as response:
        assert response.status_code == 200 and HEADER not in response.headers
        events = sse_events(response)
    assert events[0]["model"] == "chat-a"
    assert events[-1]["error"]["code"] == "model_overloaded"  # in band, and the end of it
    assert serve.models["chat-b"].calls == 0 and serve.models["chat-c"].calls == 0
    assert sink.total(catalogue.FALLBACKS) == 0


def test_a_context_too_long_goes_to_the_context_fallbacks_only(gw, serve):
    client, _, admin, sink = gw
    model = serve.models["chat-a"]
    answer = model.chat

    async def short_context(request):
        if request.messages[-1].text().startswith("long"):
            model.calls += 1
            raise ContextLengthExceededError("The prompt is longer than this model's context.", param="messages")
        return await answer(request)

    model.chat = short_context
    response = client.post("/v1/chat/completions", json=chat("chat-a", "long prompt"), headers=admin)
    assert response.status_code == 200 and response.json()["model"] == "chat-c"  # not chat-b, its `fallbacks`
    assert sink.total(catalogue.FALLBACKS, model="chat-a", fallback="chat-c", reason="context_length") == 1
    # chat-b has fallbacks but no context_fallbacks: its own 400
    refused = client.post("/v1/chat/completions", json=chat("chat-b", "TOO LONG"), headers=admin)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    assert serve.models["chat-c"].calls == 1


def test_a_model_without_a_ready_replica_falls_back(gw, serve):
    client, _, admin, sink = gw
    serve.states["chat-a"] = AppState("chat-a", "UNHEALTHY", "replica died")
    client.portal.call(client.gateway.directory.refresh)
    response = client.post("/v1/chat/completions", json=chat("chat-a"), headers=admin)
    assert response.status_code == 200 and response.json()["model"] == "chat-b"
    assert sink.total(catalogue.FALLBACKS, model="chat-a", fallback="chat-b", reason="unavailable") == 1


def test_a_request_is_not_sent_to_a_fallback_for_its_own_mistakes(gw, serve):
    client, _, admin, _ = gw
    serve.models["chat-a"].fail = True  # the model fails the request: a 500, perhaps after the work
    assert client.post("/v1/chat/completions", json=chat("chat-a"), headers=admin).status_code == 500
    bad = client.post("/v1/chat/completions", json=chat("chat-a", temperature=9), headers=admin)
    assert bad.status_code == 400
    assert serve.models["chat-b"].calls == 0


@pytest.mark.models({"cold": "text-generation", "warm": "text-generation"})
def test_a_cold_start_past_fallback_after_s_falls_back_and_the_start_goes_on(serve, tmp_path):
    cold = serve.models["cold"]
    serve.states["cold"] = AppState("cold", "RUNNING", running=0)  # scaled to zero: never heard from
    release = asyncio.Event()
    info = cold.info

    async def starting():
        await release.wait()  # Serve starting a replica
        return await info()

    cold.info = starting

    async def deployed_args():  # its fallbacks come from the deployed config: the replica never answered
        return {"cold": {"source": "x", "task": "text-generation", "fallbacks": ["warm"], "fallback_after_s": 0.2}}

    with admin_client(tmp_path, serve, deployed_args=deployed_args) as (client, _, admin):
        started = time.monotonic()
        response = client.post("/v1/chat/completions", json=chat("cold"), headers=admin)
        assert response.status_code == 200 and response.json()["model"] == "warm"
        assert response.headers[HEADER] == "cold" and time.monotonic() - started >= 0.2
        # A key that may not use the fallback waits for the start after all.
        key, _ = new_key(client, admin, models=["cold"])
        fallbacks = client.gateway.fallbacks
        gate, asked = fallbacks._model, []

        async def watched(caller, model, endpoint, via_alias=None, *, wake_wait_s=None):
            asked.append((model, wake_wait_s))
            return await gate(caller, model, endpoint, via_alias, wake_wait_s=wake_wait_s)

        fallbacks._model = watched
        answers: list = []
        waiting = threading.Thread(target=lambda: answers.append(
            client.post("/v1/chat/completions", json=chat("cold"), headers=bearer(key))))
        waiting.start()
        deadline = time.monotonic() + 10
        while asked[-1:] != [("cold", None)]:  # tried cold (bounded), then warm (not this key's), then cold again
            assert time.monotonic() < deadline and waiting.is_alive(), asked
            time.sleep(0.01)
        assert [model for model, _ in asked] == ["cold", "warm", "cold"]
        client.portal.call(release.set)
        waiting.join(10)
        (answer,) = answers
        assert answer.status_code == 200 and answer.json()["model"] == "cold" and HEADER not in answer.headers


def test_the_reasons_are_the_metric_s_label_values():
    errors = [CircuitOpenError("x"), ModelOverloadedError("x"), ContextLengthExceededError("x"),
              ModelStartingError("x"), ServiceUnavailableError("x")]
    reasons = {refusal_reason(e) for e in errors} | {unready_reason(e) for e in errors}
    assert reasons - {None} == set(catalogue.FALLBACK_REASONS)
    # What a model may have worked on, or what is the request's own, never falls back.
    for error in (InternalServerError("x"), GatewayTimeoutError("x"), ModelNotFoundError("m"), APIError("x")):
        assert refusal_reason(error) is None and unready_reason(error) is None
    assert refusal_reason(ServiceUnavailableError("replica lost", code="model_unavailable")) is None


# ----------------------------------------------------------------------------- config

TASKS = {"chat-a": "text-generation", "chat-b": "text-generation", "embed": "embedding", "later": None}


@pytest.mark.parametrize(("field", "named", "words"), [
    ("fallbacks", "embed", "same task"),
    ("context_fallbacks", "embed", "same task"),
    ("fallbacks", "chat-a", "its own fallback"),
    ("fallbacks", "nope", "not a model"),
])
def test_a_fallback_that_cannot_be_one_is_refused_naming_the_field(field, named, words):
    args = ModelAppArgs(source="x", task="text-generation", **{field: [named]})
    with pytest.raises(FallbackConfigError) as refused:
        check_fallbacks("chat-a", args, TASKS)
    assert refused.value.field == field and str(refused.value).startswith(f"{field}: ") and words in str(refused.value)


def test_a_fallback_of_the_same_task_or_one_not_known_yet_is_accepted():
    check_fallbacks("chat-a", ModelAppArgs(source="x", task="text-generation", fallbacks=["chat-b", "later"]), TASKS)


@pytest.mark.parametrize("fallbacks", [["a", "a"], ["not a model id"]])
def test_fallback_args_are_model_ids_each_once(fallbacks):
    with pytest.raises(ValueError, match="fallbacks"):
        ModelAppArgs(source="x", task="embedding", fallbacks=fallbacks)


def test_a_config_file_model_is_checked_against_the_deployed_config(tmp_path):
    deployed = {"chat-a": {"source": "x", "task": "text-generation"}, "embed": {"source": "y", "task": "embedding"},
                "unreadable": {"source": str(tmp_path / "missing")}}  # no task, and no files to infer it from
    with pytest.raises(FallbackConfigError, match="fallbacks: 'embed' is a model of task embedding"):
        check_config_fallbacks("chat-b", ModelAppArgs(source="z", task="text-generation", fallbacks=["embed"]), deployed)
    with pytest.raises(FallbackConfigError, match="context_fallbacks: 'elsewhere' is not a model"):
        check_config_fallbacks("chat-b", ModelAppArgs(source="z", task="text-generation",
                                                      context_fallbacks=["elsewhere"]), deployed)
    check_config_fallbacks("chat-b", ModelAppArgs(source="z", task="text-generation",
                                                  fallbacks=["chat-a", "unreadable"]), deployed)


@pytest.mark.models({"cfg-chat": "text-generation", "cfg-embed": "embedding"})
def test_a_run_time_load_with_a_fallback_of_another_task_is_a_400_and_nothing_is_stored(tmp_path, serve):
    (tmp_path / "x").mkdir()  # a source that resolves; the fake Serve never loads it
    load = {"model": "m", "source": str(tmp_path / "x"), "task": "embedding"}
    with admin_client(tmp_path, serve) as (client, core, admin):
        client.get("/v1/models", headers=admin)  # the directory has heard from the config's models
        for options, param in (({"fallbacks": ["cfg-chat"]}, "options.fallbacks"),
                               ({"context_fallbacks": ["nope"]}, "options.context_fallbacks"),
                               ({"fallbacks": ["m"]}, "options.fallbacks")):
            refused = client.post("/models/load", json={**load, "options": options}, headers=admin)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == param and refused.json()["error"]["code"] == "invalid_fallback"
            assert refused.json()["error"]["message"].startswith(param)
            assert client.get("/models", headers=admin).json()["data"] == [] and core.models.get("m") is None
        loaded = client.post("/models/load", json={**load, "options": {"fallbacks": ["cfg-embed"]}}, headers=admin)
        assert loaded.status_code == 202, loaded.text
        assert core.models.get("m").args["fallbacks"] == ["cfg-embed"]
