"""/metrics on real Ray Serve: what a client sent through the two gateway replicas is what the
cluster-wide scrape counts, gathered from Ray's metrics agents.

The gateway application labels requests with the key id (`metrics_key_label: true` in the test
config), so a key made here counts exactly this test's requests whatever else ran before;
the other families are compared before and after, once Ray's agents have settled (they
export every RAY_metrics_report_interval_ms, 2 s in the tests).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_gateway import admin, create_key

MODEL, EMBEDDER = "tiny-llama", "tiny-bert"
MSG = [{"role": "user", "content": "Tell me about Paris."}]
CHAT = "/v1/chat/completions"
SETTLE_S = 60


def scrape(server) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{server.gateway_url}/metrics", headers=admin(server), timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, got), v in samples.items() if n == name and all(dict(got).get(k) == x for k, x in labels.items()))


def _counts(samples: dict) -> dict:
    """The counters and histograms of this module's models: what traffic moves (gauges and the
    scrapes' own requests move by themselves)."""
    return {key: value for key, value in samples.items()
            if dict(key[1]).get("model") in (MODEL, EMBEDDER) and not key[0].endswith(("_bucket", "_sum"))
            and (key[0].endswith(("_total", "_count")))}


def settled(server, check=None, timeout_s: float = SETTLE_S) -> dict:
    """A scrape once two in a row (an export round apart) agree on this module's counts, and
    `check` holds."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        now = scrape(server)
        if last is not None and _counts(now) == _counts(last) and (check is None or check(now)):
            return now
        last = now
        time.sleep(2.5)
    raise AssertionError(f"/metrics did not settle within {timeout_s}s")


def test_metrics_needs_an_admin_key(server):
    key, _ = create_key(server)
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 403
        assert http.get("/metrics", headers=admin(server)).status_code == 200


def test_requests_sent_through_two_ingress_replicas_are_all_counted(server):
    key, key_id = create_key(server, rpm=12)
    before = settled(server)
    statuses: list[int] = []
    cached = 0  # the same deterministic request: one miss, then hits once the other replica has the entry
    with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        deadline = time.monotonic() + 10
        while True:  # until a hit (the cache's keys reach the other replica within a sync), 3 tries at least
            response = http.post(CHAT, json={"model": MODEL, "messages": MSG, "temperature": 0, "max_tokens": 4})
            statuses.append(response.status_code)
            cached += 1
            if cached >= 3 and (response.headers["x-cache"] == "HIT" or cached == 8 or time.monotonic() > deadline):
                break
            time.sleep(0.25)
        assert response.headers["x-cache"] == "HIT" and cached <= 8, (cached, response.headers)  # 8 of 12 rpm at most
        statuses.append(http.post(CHAT, json={"model": MODEL, "messages": MSG, "temperature": 7}).status_code)
        statuses.append(http.post("/v1/embeddings", json={"model": EMBEDDER, "input": [f"text {uuid.uuid4()}", "fixed"]}).status_code)
        uncached = [http.post(CHAT, json={"model": MODEL, "messages": MSG, "max_tokens": 4, "temperature": 1}).status_code
                    for _ in range(12)]
    statuses += uncached
    assert statuses[:cached + 2] == [200] * cached + [400, 200] and 429 in uncached, statuses  # the key's 12 rpm ran out
    expected = {str(status): float(statuses.count(status)) for status in set(statuses)}

    def all_counted(samples: dict) -> bool:
        return total(samples, "hf_server_requests_total", key_id=key_id) >= len(statuses)

    after = settled(server, all_counted)
    counted = {status: total(after, "hf_server_requests_total", key_id=key_id, status=status) for status in expected}
    assert counted == expected
    assert total(after, "hf_server_requests_total", key_id=key_id) == len(statuses)  # N sent, N counted

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    limited = uncached.count(429)
    assert delta("hf_server_rate_limited_total", model=MODEL, limit="requests") == limited
    assert delta("hf_server_errors_total", model=MODEL, type="requests") == limited
    # Refused while parsing, before the model was looked up: counted, under no model label.
    assert delta("hf_server_errors_total", endpoint=CHAT, type="invalid_request_error") == 1
    hits, misses = delta("hf_server_cache_hits_total", model=MODEL, kind="response"), delta(
        "hf_server_cache_misses_total", model=MODEL, kind="response")
    assert hits + misses == cached and hits >= 1 and misses >= 1
    assert delta("hf_server_cache_misses_total", model=EMBEDDER, kind="embedding") >= 1  # the fresh input
    answered = uncached.count(200)
    generated = answered + misses  # every generation the model ran: the misses and the uncached ones
    assert delta("hf_server_request_duration_seconds_count", model=MODEL, endpoint=CHAT) >= answered
    assert delta("hf_server_prompt_tokens_total", model=MODEL) > 0
    assert delta("hf_server_generation_tokens_total", model=MODEL) >= generated
    assert delta("hf_server_request_queue_seconds_count", model=MODEL) >= generated
    assert total(after, "hf_server_models_loaded", model=MODEL) >= 1
    assert total(after, "hf_server_model_load_duration_seconds_count", model=MODEL) >= 1
    print(f"\nMETRICS counted {counted} for {len(statuses)} requests through 2 ingress replicas")


def test_one_time_to_first_token_per_stream(server):
    key, _ = create_key(server, rpm=1000)
    before = settled(server)
    streams = 5
    with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        for i in range(streams):
            body = {"model": MODEL, "messages": MSG, "max_tokens": 6, "temperature": 1, "stream": True}
            with http.stream("POST", CHAT, json=body, headers={"x-request-id": f"ttft-{i}-{uuid.uuid4().hex[:8]}"}) as s:
                assert s.status_code == 200
                assert [line for line in s.iter_lines() if line.startswith("data: ")][-1] == "data: [DONE]"

    def arrived(samples: dict) -> bool:
        return total(samples, "hf_server_time_to_first_token_seconds_count", model=MODEL) - total(
            before, "hf_server_time_to_first_token_seconds_count", model=MODEL) >= streams

    after = settled(server, arrived)
    ttft = total(after, "hf_server_time_to_first_token_seconds_count", model=MODEL) - total(
        before, "hf_server_time_to_first_token_seconds_count", model=MODEL)
    assert ttft == streams
    itl = total(after, "hf_server_inter_token_latency_seconds_count", model=MODEL) - total(
        before, "hf_server_inter_token_latency_seconds_count", model=MODEL)
    assert itl >= streams  # several tokens per stream


def test_access_log_lines_name_the_request(server):
    """One JSON line per request in the ingress replica's Serve log, with its id and outcome."""
    import ray

    key, key_id = create_key(server)
    request_id = f"access-{uuid.uuid4().hex}"
    with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        response = http.post(CHAT, json={"model": MODEL, "messages": MSG, "max_tokens": 3, "temperature": 1},
                             headers={"x-request-id": request_id})
    assert response.status_code == 200
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    deadline, lines = time.monotonic() + 20, []
    while time.monotonic() < deadline and not lines:
        for file in logs.glob("replica_gateway_Ingress_*.log"):
            for line in file.read_text(errors="replace").splitlines():
                if request_id in line and '"endpoint"' in line:
                    lines.append(json.loads(line))
        time.sleep(0.5)
    assert len(lines) == 1, lines
    (line,) = lines
    assert line["request_id"] == request_id and line["key_id"] == key_id and line["model"] == MODEL
    assert line["status"] == 200 and line["endpoint"] == CHAT and line["latency_ms"] > 0
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0 and line["client"]
    assert key not in json.dumps(line)


def test_gauges_of_an_idle_model_stay_in_every_scrape(server):
    """A loaded model's gauges do not change while it idles, and Ray's agent evicts a gauge not
    set within two report intervals (4 s here): the replicas set theirs again every interval,
    so `hf_server_models_loaded` never vanishes (the no-ready-replica alert relies on it)."""
    seen = []
    for _ in range(8):  # 12 s: three eviction windows (the waiting is the thing under test)
        samples = scrape(server)
        seen.append(total(samples, "hf_server_models_loaded", model=MODEL))
        time.sleep(1.5)
    assert all(value >= 1 for value in seen), seen
