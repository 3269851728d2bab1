"""`hfserve status`'s table from a canned /status, and the pure part of /status: every replica
of a model from Serve's view and the replicas' own reports, with the model's totals. No Ray."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from fastapi.testclient import TestClient

from contract.model_api import EngineStats, ReplicaRecord
from contract.status import (
    ServeReplica,
    StatusReport,
    merge_replicas,
    serve_replicas,
    totals,
)
from serve_app.cli.main import main
from serve_app.cli.status import render
from serve_app.ingress import status_report as status_module
from serve_app.state.keys import read_admin_key_file
from tests.unit.fakes import make_app

pytestmark = pytest.mark.models({"chat-model": "text-generation"})  # what `serve` runs
NOW = 1_700_000_000.0


def record(replica_id: str, *, hostname: str = "node-a", ongoing: int = 0, running: int = 0, waiting: int = 0,
           kv: float | None = None) -> ReplicaRecord:
    return ReplicaRecord(
        model="m", replica_id=replica_id, node_id="n" * 56, node_ip="10.0.0.1", hostname=hostname, platform="cpu",
        backend="openvino", device="cpu", pid=4242, started_at=int(NOW) - 60,
        engine=EngineStats(running_requests=running, waiting_requests=waiting, kv_cache_usage=kv),
        ongoing_requests=ongoing,
    )


# ----------------------------------------------------------------------------- aggregation


def test_serve_and_reports_are_merged_per_replica():
    placed = [record("aaaa1111", ongoing=3, running=2, waiting=1), record("gone0000")]
    known = [ServeReplica(replica_id="aaaa1111", state="RUNNING", pid=4242),
             ServeReplica(replica_id="bbbb2222", state="STARTING", node_ip="10.0.0.2")]
    replicas = merge_replicas(placed, known, NOW)
    by_id = {r.replica_id: r for r in replicas}
    assert by_id["aaaa1111"].state == "RUNNING" and by_id["aaaa1111"].ongoing_requests == 3
    assert by_id["aaaa1111"].hostname == "node-a" and by_id["aaaa1111"].engine.running_requests == 2
    # Known to Serve, not reported yet: listed with its state and null counters.
    starting = by_id["bbbb2222"]
    assert starting.state == "STARTING" and starting.node_ip == "10.0.0.2"
    assert starting.ongoing_requests is None and starting.engine is None and starting.reported_s_ago is None
    # Reported, but Serve no longer lists it: stopped, and last.
    assert replicas[-1].replica_id == "gone0000" and replicas[-1].state == "STOPPED"

    sums = totals(replicas)
    assert sums.replicas == 2 and sums.ready == 1
    assert sums.by_state == {"RUNNING": 1, "STARTING": 1, "STOPPED": 1}
    assert (sums.ongoing_requests, sums.running_requests, sums.waiting_requests) == (3, 2, 1)


def test_without_serve_the_reports_are_listed_with_a_null_state():
    replicas = merge_replicas([record("aaaa1111", ongoing=1), record("bbbb2222", hostname="node-b")], None, NOW)
    assert [r.state for r in replicas] == [None, None]
    sums = totals(replicas)
    assert sums.by_state == {"unknown": 2} and sums.replicas == 2 and sums.ready == 2 and sums.ongoing_requests == 1


def test_serve_details_give_the_model_deployments_replicas_only():
    details = {"applications": {
        "chat": {"deployments": {"ModelServer": {"replicas": [
            {"replica_id": "abc", "state": "RUNNING", "pid": 7, "node_id": "n1", "node_ip": "10.0.0.1",
             "actor_name": "SERVE_REPLICA::chat#ModelServer#abc", "start_time_s": 1.0}]}}},
        "ingress": {"deployments": {"Ingress": {"replicas": [{"replica_id": "x", "state": "RUNNING"}]}}},
        "broken": {"deployments": {}},
    }}
    found = serve_replicas(details, "ModelServer")
    assert list(found) == ["chat"]
    assert found["chat"][0] == ServeReplica(replica_id="abc", state="RUNNING", pid=7, node_id="n1", node_ip="10.0.0.1")


@pytest.fixture
def gw(tmp_path, serve):
    app, gateway, _ = make_app(tmp_path, serve)
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
        assert client.get("/v1/models", headers=admin).status_code == 200  # the directory knows the model
        yield client, gateway, admin


def test_status_without_serve_still_answers_with_null_states(gw):
    client, gateway, admin = gw
    gateway.directory.entries()[0].placed = [record("aaaa1111", ongoing=2)]
    body = client.get("/status", headers=admin).json()
    StatusReport.model_validate(body)
    (model,) = body["models"]
    assert body["replica_state_error"]  # no Ray in this process
    assert model["replicas"][0]["state"] is None and model["replicas"][0]["ongoing_requests"] == 2
    assert model["totals"]["ongoing_requests"] == 2 and model["engine"]["running_requests"] == 0


def test_a_slow_serve_controller_degrades_to_null_states(gw, monkeypatch):
    client, gateway, admin = gw
    gateway.directory.entries()[0].placed = [record("aaaa1111")]
    monkeypatch.setattr(status_module, "SERVE_STATES_TIMEOUT_S", 0.2)
    release, returned = threading.Event(), threading.Event()

    def stuck_controller() -> None:  # answers only once the test lets it
        release.wait(60)
        returned.set()

    monkeypatch.setattr(status_module, "_serve_details", stuck_controller)
    try:
        body = client.get("/status", headers=admin).json()
        answered_while_stuck = not returned.is_set()
    finally:
        release.set()
    assert answered_while_stuck  # /status did not wait for the controller: no clock needed to tell
    assert "TimeoutError" in body["replica_state_error"] and body["models"][0]["replicas"][0]["state"] is None


def test_serve_states_are_used_when_serve_answers(monkeypatch):
    details = {"applications": {"m": {"deployments": {"ModelServer": {"replicas": [
        {"replica_id": "aaaa1111", "state": "RUNNING"}, {"replica_id": "cccc3333", "state": "RECOVERING"}]}}}}}
    monkeypatch.setattr(status_module, "_serve_details", lambda: details)
    known, why = asyncio.run(status_module.serve_replica_states())
    assert why is None and [r.state for r in known["m"]] == ["RUNNING", "RECOVERING"]


# ----------------------------------------------------------------------------- the table


def _replica(replica_id, state, *, ongoing=None, engine=None, hostname="gpu-1", ip="10.0.0.7", pid=31337):
    return {"replica_id": replica_id, "state": state, "node_id": "n1", "node_ip": ip, "hostname": hostname, "pid": pid,
            "platform": "cpu", "backend": "openvino", "device": "cpu", "started_at": 1, "ongoing_requests": ongoing,
            "engine": engine, "reported_s_ago": 1.2 if engine else None}


def _engine(running, waiting, kv=None):
    return {"running_requests": running, "waiting_requests": waiting, "generated_tokens_total": 0,
            "cancelled_requests_total": 0, "finished_requests_total": 0, "kv_cache_usage": kv}


def _model(model_id, status, replicas, *, backend="openvino", platform="cpu", message=None, breaker="closed", totals=None):
    return {"id": model_id, "object": "model", "created": 1, "owned_by": "hfserve", "task": "text-generation",
            "status": status, "backend": backend, "device": "cpu", "platform": platform, "message": message,
            "source": "/models/x", "max_model_len": 512, "revision": "r", "circuit_breaker": {"state": breaker},
            "engine": None, "replicas": replicas, "totals": totals}


CANNED = {
    "uptime_s": 3723.4,
    "models": [
        _model("tiny-llama", "ready", [
            _replica("0123456789abcdef", "RUNNING", ongoing=3, engine=_engine(2, 1, 0.25)),
            _replica("fedcba98", "STARTING", hostname=None, ip="10.0.0.8", pid=None),
        ], totals={"replicas": 2, "ready": 1, "by_state": {"RUNNING": 1, "STARTING": 1}, "ongoing_requests": 3,
                   "running_requests": 2, "waiting_requests": 1}),
        _model("tiny-broken", "failed", [], backend=None, platform=None, breaker="open",
               message="Deploying app 'tiny-broken' failed: no node has a GPU",
               totals={"replicas": 0, "ready": 0, "by_state": {}, "ongoing_requests": 0, "running_requests": 0,
                       "waiting_requests": 0}),
    ],
    "nodes": [{"hostname": "gpu-1", "node_id": "n1", "node_ip": "10.0.0.7",
               "platforms": {"cuda": {"available": False}, "openvino": {"available": True}, "cpu": {"available": True}}}],
    "cache": {"entries": 12, "bytes": 3 * 2**20, "hits": 3, "misses": 1},
    "state": {"uptime_s": 3700.0, "settings": {}, "error": None},
    "replica_state_error": None,
}


def _line(text: str, *starts: str) -> str:
    (found,) = [line for line in text.splitlines() if line.split()[:len(starts)] == list(starts)]
    return found


def test_the_table_shows_each_model_with_its_replicas():
    text = render(CANNED)
    assert _line(text, "MODEL").split() == ["MODEL", "STATUS", "BACKEND/PLATFORM", "READY", "ONGOING", "RUN/WAIT", "BREAKER"]
    assert _line(text, "tiny-llama").split() == ["tiny-llama", "ready", "openvino/cpu", "1/2", "3", "2/1", "closed"]
    # Replicas are indented under their model, id shortened, with the node, state and counters.
    running = _line(text, "01234567")
    assert running.startswith("  ") and running.split() == ["01234567", "gpu-1", "(10.0.0.7)", "RUNNING", "31337", "3", "2/1", "25%"]
    # Not reported yet: its state, and dashes for what only its report would say.
    assert _line(text, "fedcba98").split() == ["fedcba98", "10.0.0.8", "STARTING", "-", "-", "-", "-"]
    lines = text.splitlines()
    assert lines.index(_line(text, "tiny-llama")) < lines.index(running) < lines.index(_line(text, "tiny-broken"))


def test_the_table_explains_a_failed_model():
    text = render(CANNED)
    assert _line(text, "tiny-broken").split() == ["tiny-broken", "failed", "-", "0/0", "0", "0/0", "open"]
    lines = text.splitlines()
    after = lines[lines.index(_line(text, "tiny-broken")) + 1]
    assert after == "  ! Deploying app 'tiny-broken' failed: no node has a GPU"


def test_the_table_ends_with_nodes_cache_and_state():
    text = render(CANNED)
    assert text.splitlines()[0] == "hfserve up 3723 s"
    assert _line(text, "gpu-1", "10.0.0.7").split() == ["gpu-1", "10.0.0.7", "openvino,", "cpu"]
    assert _line(text, "cache:") == "cache: 12 entries, 3.0 MiB, 3 hits / 1 misses (hit rate 75%)"
    assert _line(text, "state", "actor:") == "state actor: up 3700 s"


def test_the_table_says_what_is_unknown():
    report = {**CANNED, "replica_state_error": "Serve's controller did not give the replica states: TimeoutError",
              "nodes": {"error": "the hardware actors did not answer: TimeoutError"},
              "state": {"uptime_s": None, "settings": None, "error": "the state actor is restarting"}, "cache": None}
    report["models"] = [_model("m", "ready", [_replica("abcd", None, ongoing=0, engine=_engine(0, 0))])]
    text = render(report)
    assert _line(text, "abcd").split()[3] == "unknown"
    assert "(replica states unknown: Serve's controller did not give the replica states: TimeoutError)" in text
    assert "nodes: the hardware actors did not answer: TimeoutError" in text
    assert "state actor: the state actor is restarting" in text and "cache: -" in text
    assert "no models are deployed" in render({**CANNED, "models": []})


def test_the_cli_prints_the_table_or_the_json(monkeypatch, capsys):
    asked = []

    class Api:
        def __init__(self, url):
            asked.append(url)

        def __call__(self, method, path):
            assert (method, path) == ("GET", "/status")
            return CANNED

    monkeypatch.setattr("serve_app.cli.keys.AdminApi", Api)
    assert main(["status", "--url", "http://h:1/gw"]) == 0
    assert "tiny-llama" in capsys.readouterr().out and asked == ["http://h:1/gw"]
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == CANNED and asked[-1] == "http://127.0.0.1:8000"
