"""/status on real Ray Serve lists every replica of every model with its node, Serve's state
of it, its ongoing requests and its engine counters; `hfserve status` shows it as a table
or as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.integration.conftest import OLD_NAME_CACHE_TTL_S

MODELS = ["tiny-bert", "tiny-bert-fragile", "tiny-bert-torch", "tiny-llama", "tiny-llama-hf"]
HFSERVE = Path(sys.executable).parent / "hfserve"


def _admin_status(server) -> dict:
    with httpx.Client(base_url=server.gateway_url, timeout=30, headers={"Authorization": f"Bearer {server.admin_key()}"}) as http:
        response = http.get("/status")
    assert response.status_code == 200, response.text
    return response.json()


def _reported(status: dict) -> bool:
    models = {m["id"]: m for m in status["models"]}
    return all(models[m]["replicas"] and all(r["engine"] for r in models[m]["replicas"]) for m in MODELS)


def _status_once_reported(server, timeout_s: float = 30.0) -> dict:
    """Replicas report themselves on their health checks (every 5 s) and the directory lists
    them every second: a model that was just (re)started may take a moment to appear."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = _admin_status(server)
        if _reported(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_status_lists_every_replica_with_node_state_and_counters(server):
    status = _status_once_reported(server)
    assert status["replica_state_error"] is None
    models = {m["id"]: m for m in status["models"]}
    assert set(MODELS) <= set(models)
    node_ids = {n["node_id"] for n in status["nodes"]}
    for model_id in MODELS:
        model = models[model_id]
        assert model["status"] == "ready", model
        # A replica killed by an earlier test is listed as STOPPED until its report expires (20 s).
        live = [r for r in model["replicas"] if r["state"] != "STOPPED"]
        assert live, f"{model_id} has no live replica listed"
        for replica in live:
            assert replica["state"] == "RUNNING", (model_id, replica)
            assert replica["node_id"] in node_ids and replica["node_ip"] and replica["hostname"]
            assert replica["pid"] > 0 and (replica["platform"], replica["backend"]) == (model["platform"], model["backend"])
            assert isinstance(replica["ongoing_requests"], int) and replica["ongoing_requests"] >= 0
            engine = replica["engine"]
            assert isinstance(engine["running_requests"], int) and isinstance(engine["waiting_requests"], int)
        totals = model["totals"]
        assert totals["replicas"] == totals["ready"] == totals["by_state"]["RUNNING"] == len(live)
        assert totals["ongoing_requests"] == sum(r["ongoing_requests"] for r in live)
        assert totals["running_requests"] == sum(r["engine"]["running_requests"] for r in live)


def _hfserve_status(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_SERVER_API_KEY": server.admin_key()}
    return subprocess.run([str(HFSERVE), "status", "--url", server.gateway_url, *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def test_hfserve_status_prints_a_table_and_json(server):
    _status_once_reported(server)
    table = _hfserve_status(server)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    for model_id in MODELS:
        (line,) = [line for line in lines if line.split()[:1] == [model_id]]
        assert line.split()[1] == "ready"
        replica_line = lines[lines.index(line) + 1]  # its first replica, indented under it
        assert replica_line.startswith("  ") and "RUNNING" in replica_line.split(), table.stdout
    raw = _hfserve_status(server, "--json")
    assert raw.returncode == 0, raw.stderr
    shown = json.loads(raw.stdout)
    assert set(MODELS) <= {m["id"] for m in shown["models"]}


def test_hfserve_status_without_the_admin_key_says_so(server, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_SERVER_API_KEY"}
    env["HF_SERVER_STATE_DIR"] = str(tmp_path)  # no admin.key there
    done = subprocess.run([str(HFSERVE), "status", "--url", server.gateway_url], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert done.returncode != 0 and "no admin key" in done.stderr


def test_the_node_actor_detects_once_and_then_reads_only_free_memory(server):
    """A node's hardware does not change while it runs; its free memory does. Detecting again
    is a fresh interpreter importing torch and OpenVINO (seconds of CPU, which halved a 2-core
    node's throughput for 3 s every minute), so the actor re-reads free memory alone."""
    import psutil
    import ray

    from hardware.probe import node_actor

    actor = node_actor(ray.get_runtime_context().get_node_id())
    assert actor is not None
    first = ray.get(actor.report.remote())
    again = [ray.get(actor.report.remote(max_age_s=0)) for _ in range(3)]  # stale at once: re-read
    assert {report["detected_at"] for report in again} == {first["detected_at"]}  # not detected again
    available = psutil.virtual_memory().available
    for report in again:
        assert abs(report["cpu"]["memory_available_bytes"] - available) < 0.2 * available
        assert report["platforms"]["cpu"]["devices"][0]["free_memory_bytes"] == report["cpu"]["memory_available_bytes"]
        assert _without_free_memory(report["platforms"]) == _without_free_memory(first["platforms"])


def _without_free_memory(platforms: dict) -> dict:
    return {name: {**p, "devices": [{k: v for k, v in d.items() if k != "free_memory_bytes"} for d in p["devices"]]}
            for name, p in platforms.items()}


def test_a_config_with_an_old_setting_name_still_deploys(server):
    """tests/integration/conftest.py gives the cache's lifetime under its old name,
    `cache_ttl_seconds`: it took effect, and /status shows it under its new one."""
    settings = _admin_status(server)["state"]["settings"]
    assert settings["cache_ttl_s"] == OLD_NAME_CACHE_TTL_S != 3600  # not the default
    assert all(ingress.cache_ttl_s == OLD_NAME_CACHE_TTL_S for ingress in server.plan.ingresses)
