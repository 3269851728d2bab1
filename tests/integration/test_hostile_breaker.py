"""One caller cannot open a model's breaker for others: before it opens, or while it is half
open, the ingress sends the model a small probe request of its own (gateway/breaker_gate.py), and
that probe must be one each task's real model answers. With the tiny models and their limits no
key can make the model itself fail by its requests alone (what is over a limit is a 4xx), so the
caller-specific paths are unit tests (tests/unit/test_breaker.py); a replica killed under one
key's traffic, whose probe fails, is test_gateway.py's breaker test."""

from __future__ import annotations

import time

import httpx
import pytest
import ray

from tests.integration.hostile import admin_headers, assert_others_served, new_key

SYNC_IDLE_S = 1.0  # gateway/state_sync.py: an idle ingress replica syncs its breakers once a second
PROBED = {  # a model of each task, and a request of its endpoint
    "tiny-bert": ("/v1/embeddings", {"input": "hello"}),
    "tiny-reranker": ("/v1/rerank", {"query": "hello", "documents": ["a", "b"]}),
    "tiny-classifier": ("/v1/classify", {"input": "hello"}),
    "tiny-llama": ("/v1/completions", {"prompt": "hello", "max_tokens": 2}),
}


def _breaker_state(http: httpx.Client, server, model: str) -> str:
    status = http.get("/status", headers=admin_headers(server)).json()  # the state actor's word
    return next(m["circuit_breaker"]["state"] for m in status["models"] if m["id"] == model)


def _until_every_ingress_replica_sees(http: httpx.Client, model: str, status: str, *, heard_from: bool = False) -> None:
    """Each ingress replica syncs its copy of the breakers at least once a second: once every
    answer for a while longer than that says `status`, both replicas have it. `heard_from`: and
    the model's own answer (its card names its task), which a replica that has just started
    (a fault test's replacement) may not have yet."""
    deadline, since = time.monotonic() + 15, None
    while time.monotonic() < deadline:
        card = http.get(f"/v1/models/{model}").json()
        now = time.monotonic()
        seen = card["status"] == status and (not heard_from or card.get("task") is not None)
        since = (since or now) if seen else None
        if since is not None and now - since > SYNC_IDLE_S + 0.5:
            return
        time.sleep(0.05)
    raise AssertionError(f"the ingress replicas never all showed {model} {status}")


@pytest.mark.parametrize("model", list(PROBED))
def test_a_half_open_breaker_is_closed_by_a_probe_the_real_model_answers(server, model):
    state = ray.get_actor("hfserve_state", namespace="hfserve")
    # Open it as the ingress does when Serve reports the replicas lost (failures no request
    # caused), then let it probe as when Serve reports a healthy replacement.
    threshold = ray.get(state.status.remote())["settings"]["breaker_threshold"]
    for _ in range(threshold):
        ray.get(state.breaker_report.remote(model, False, None))
    ray.get(state.breaker_replaced.remote(model))
    key, _ = new_key(server)
    path, body = PROBED[model]
    with httpx.Client(base_url=server.gateway_url, timeout=60,
                      headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}) as http:
        _until_every_ingress_replica_sees(http, model, "circuit_half_open")
        assert _breaker_state(http, server, model) == "half_open"
        response = http.post(path, json={"model": model, **body})  # our probe first, then this request
        assert response.status_code == 200, response.text
        assert _breaker_state(http, server, model) == "closed"
    assert_others_served(server)
