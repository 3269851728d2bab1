"""What the ingress records per request (metrics and the access-log line), and who may read
/metrics. Over the fakes and an in-process state core; a sink stands in for Ray's metrics."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from observability import catalogue
from serve_app.ingress.http.access_log import RAY_FLATTENED, endpoint_of
from serve_app.state.keys import read_admin_key_file
from tests.unit.fakes import make_app

MSG = [{"role": "user", "content": "hello big world"}]


class Sink:
    def __init__(self):
        self.records: list[tuple[str, float, dict[str, str]]] = []

    def __call__(self, spec, value, labels):
        self.records.append((spec.name, value, labels))

    def total(self, spec, **labels) -> float:
        return sum(v for name, v, got in self.records if name == spec.name and all(got.get(k) == x for k, x in labels.items()))

    def count(self, spec, **labels) -> int:
        return sum(1 for name, _, got in self.records if name == spec.name and all(got.get(k) == x for k, x in labels.items()))


class FakeScraper:
    async def exposition(self) -> bytes:
        return b"# HELP hf_server_requests_total x\n# TYPE hf_server_requests_total counter\n"

    async def close(self) -> None:
        return None


def _app(serve, tmp_path, **args):
    sink = Sink()
    app, gateway, core = make_app(tmp_path, serve, key_cache_ttl_s=0.001, metrics_sink=sink,
                                  scraper=FakeScraper(), **args)
    return app, sink


@pytest.fixture
def gw(serve, tmp_path):
    app, sink = _app(serve, tmp_path)
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
        yield client, sink, admin


def _key(client, admin, **fields) -> tuple[str, str]:
    response = client.post("/admin/keys", json={"name": "metrics", **fields}, headers=admin)
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def test_every_request_is_counted_with_its_model_endpoint_and_status(gw):
    client, sink, admin = gw
    for _ in range(3):
        assert client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG, "temperature": 1},
                           headers=admin).status_code == 200
    assert client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG, "temperature": 9},
                       headers=admin).status_code == 400
    chat = {"model": "chat-model", "endpoint": "/v1/chat/completions"}
    assert sink.total(catalogue.REQUESTS, **chat, status="200") == 3
    assert sink.total(catalogue.REQUESTS, status="400", endpoint="/v1/chat/completions") == 1
    assert sink.count(catalogue.REQUEST_DURATION, **chat) == 3
    assert sink.total(catalogue.ERRORS, type="invalid_request_error", endpoint="/v1/chat/completions") == 1
    assert sink.count(catalogue.REQUEST_QUEUE, model="chat-model") == 3  # each call's start was heard


def test_a_streams_queue_time_leaves_out_the_replicas_time_to_its_first_chunk(serve, gw):
    client, sink, admin = gw
    delay = 0.4  # the replica's prefill before its first chunk
    serve.models["chat-model"].first_chunk_delay_s = delay
    body = {"model": "chat-model", "messages": MSG, "temperature": 1, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=admin) as response:
        assert response.status_code == 200
        assert b"[DONE]" in b"".join(response.iter_bytes())
    [queued] = [v for name, v, labels in sink.records if name == catalogue.REQUEST_QUEUE.name and labels.get("model") == "chat-model"]
    [took] = [v for name, v, labels in sink.records if name == catalogue.REQUEST_DURATION.name and labels.get("model") == "chat-model"]
    # The call counts the replica's delay; the queue time does not (with it, it would be >= delay).
    assert took >= delay and queued < delay


def test_a_model_that_does_not_exist_is_never_a_label_value(gw):
    client, sink, admin = gw
    for name in ("no-such-model", "x" * 300, "<script>"):
        response = client.post("/v1/chat/completions", json={"model": name, "messages": MSG}, headers=admin)
        assert response.status_code == 404
    labels = [labels for _, _, labels in sink.records]
    assert all(label.get("model", "") == "" for label in labels)
    assert sink.total(catalogue.ERRORS, type="invalid_request_error", model="") == 3


def test_raw_paths_are_never_label_values():
    assert endpoint_of("/v1/models/anything-a-client-sends") == "/v1/models/{model}"
    assert endpoint_of("/admin/keys/key_123") == "/admin"
    assert endpoint_of("/v1/chat/completions/../../etc") == "other"
    assert endpoint_of("/" + "a" * 1000) == "other"


def test_rate_limited_requests_are_counted_by_the_limit_hit(gw):
    client, sink, admin = gw
    key, _ = _key(client, admin, rpm=2)
    statuses = [client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG, "temperature": 1},
                            headers={"Authorization": f"Bearer {key}"}).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    assert sink.total(catalogue.RATE_LIMITED, model="chat-model", limit="requests") == 2
    assert sink.total(catalogue.REQUESTS, model="chat-model", status="429") == 2


def test_auth_failures_are_counted_by_reason(gw):
    client, sink, admin = gw
    key, _ = _key(client, admin)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer hf_" + "A" * 43}).status_code == 401
    assert client.get("/status", headers={"Authorization": f"Bearer {key}"}).status_code == 403
    assert sink.total(catalogue.AUTH_FAILURES, reason="missing_key") == 1
    assert sink.total(catalogue.AUTH_FAILURES, reason="invalid_key") == 1
    assert sink.total(catalogue.AUTH_FAILURES, reason="forbidden") == 1


def test_cache_hits_and_misses_per_kind(gw):
    client, sink, admin = gw
    body = {"model": "chat-model", "messages": MSG, "temperature": 0}
    first = client.post("/v1/chat/completions", json=body, headers=admin)
    second = client.post("/v1/chat/completions", json=body, headers=admin)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert sink.total(catalogue.CACHE_MISSES, model="chat-model", kind="response") == 1
    assert sink.total(catalogue.CACHE_HITS, model="chat-model", kind="response") == 1
    client.post("/v1/embeddings", json={"model": "embed-model", "input": ["a", "b"]}, headers=admin)
    client.post("/v1/embeddings", json={"model": "embed-model", "input": ["a", "b", "c"]}, headers=admin)
    assert sink.total(catalogue.CACHE_MISSES, model="embed-model", kind="embedding") == 3  # per input: a, b, then c
    assert sink.total(catalogue.CACHE_HITS, model="embed-model", kind="embedding") == 2


def test_key_ids_are_a_label_only_when_an_operator_opts_in(serve, tmp_path):
    for opted_in in (False, True):
        app, sink = _app(serve, tmp_path / str(opted_in), metrics_key_label=opted_in)
        with TestClient(app) as client:
            admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path / str(opted_in))}"}
            key, key_id = _key(client, admin)
            client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG, "temperature": 1},
                        headers={"Authorization": f"Bearer {key}"})
        keys = {labels["key_id"] for name, _, labels in sink.records if name == catalogue.REQUESTS.name}
        if opted_in:  # the admin's own calls (creating the key) are labelled with its key id too
            assert key_id in keys and "" not in keys
        else:
            assert keys == {""}
        assert not any(key in str(labels) for _, _, labels in sink.records)  # never the secret


def test_one_access_log_line_per_request_with_what_happened_and_no_secret(gw, caplog):
    client, sink, admin = gw
    key, key_id = _key(client, admin)
    caplog.set_level(logging.INFO, logger="ray.serve.hfserve.access")
    caplog.clear()
    headers = {"Authorization": f"Bearer {key}"}
    client.post("/v1/chat/completions", json={"model": "chat-model", "messages": MSG, "temperature": 0}, headers=headers)
    with client.stream("POST", "/v1/chat/completions", headers=headers,
                       json={"model": "chat-model", "messages": MSG, "temperature": 1, "stream": True}) as stream:
        assert sum(1 for line in stream.iter_lines() if line.startswith("data: ")) > 1
    client.post("/v1/chat/completions", json={"model": "chat-model", "messages": "nope"}, headers=headers)
    lines = [getattr(r, RAY_FLATTENED) for r in caplog.records if r.name == "ray.serve.hfserve.access"]
    assert len(lines) == 3
    whole, streamed, refused = lines
    assert whole["key_id"] == key_id and whole["model"] == "chat-model" and whole["status"] == 200
    assert whole["endpoint"] == "/v1/chat/completions" and whole["cache"] == "MISS"
    assert whole["prompt_tokens"] > 0 and whole["completion_tokens"] > 0 and whole["latency_ms"] > 0
    assert whole["ttft_ms"] is None and whole["client"] and not whole["aborted"]
    assert streamed["ttft_ms"] is not None and 0 < streamed["ttft_ms"] <= streamed["latency_ms"]
    assert streamed["completion_tokens"] > 0 and streamed["cache"] is None
    assert refused["status"] == 400 and refused["error_type"] == "invalid_request_error"
    assert key not in caplog.text
    for record in caplog.records:
        assert key not in record.getMessage() and key not in str(getattr(record, RAY_FLATTENED, ""))


def test_probes_and_scrapes_log_at_debug_only(gw, caplog):
    client, sink, admin = gw
    caplog.set_level(logging.INFO, logger="ray.serve.hfserve.access")
    caplog.clear()
    client.get("/health")
    client.get("/metrics", headers=admin)
    assert not [r for r in caplog.records if r.name == "ray.serve.hfserve.access"]
    assert sink.total(catalogue.REQUESTS, endpoint="/health", status="200") == 1  # still counted


def test_metrics_is_for_admins_unless_public(serve, tmp_path):
    app, _ = _app(serve, tmp_path / "private")
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path / 'private')}"}
        key, _ = _key(client, admin)
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 403
        response = client.get("/metrics", headers=admin)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        assert "hf_server_requests_total" in response.text
    app, _ = _app(serve, tmp_path / "public", public_metrics=True)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/status").status_code == 401  # only /metrics is opened


def test_a_request_refused_for_its_request_id_is_still_logged_and_counted(gw, caplog):
    client, sink, admin = gw
    caplog.set_level(logging.INFO, logger="ray.serve.hfserve.access")
    caplog.clear()
    response = client.get("/v1/models", headers={**admin, "x-request-id": "<bad id>"})
    assert response.status_code == 400
    (line,) = [getattr(r, RAY_FLATTENED) for r in caplog.records if r.name == "ray.serve.hfserve.access"]
    assert line["status"] == 400 and line["error_code"] == "invalid_request_id"
    assert line["request_id"] != "<bad id>"  # the malformed id is not written to the log
    assert sink.total(catalogue.REQUESTS, endpoint="/v1/models", status="400") == 1
