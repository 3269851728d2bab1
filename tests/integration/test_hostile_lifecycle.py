"""Hostile run-time loads (issue 27, items 4 and 6) on the shared deployment's "gateway" ingress:
odd sources are 400s before the 202, custom code never runs, a load no node can place is a
400, one that waits for resources is `pending` and then `failed` at its timeout, the server's
own application names are 409s, and a key without admin rights sees a model's status and a
short reason, never the detail. After each, another key's chat and embeddings still answer."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from tests.integration.hostile import admin_headers, assert_others_served, new_key

SMALL = {"num_cpus": 0.05}


@pytest.fixture(scope="module")
def admin(server):
    with httpx.Client(base_url=server.gateway_url, timeout=60, headers=admin_headers(server)) as http:
        yield http


def _records(admin: httpx.Client) -> set[str]:
    return {record["model"] for record in admin.get("/models").json()["data"]}


def _refused(admin: httpx.Client, body: dict, status: int, code: str, param: str | None) -> dict:
    before = _records(admin)
    response = admin.post("/models/load", json={"backend": "transformers", "options": dict(SMALL), **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert _records(admin) == before  # nothing recorded, nothing deployed
    return error


def _corrupt_copy(model: Path, to: Path) -> Path:
    shutil.copytree(model, to)
    weights = next(to.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:4096])  # a header that promises tensors the file lacks
    return to


@pytest.mark.parametrize("case", ["/dev/null", "/dev/zero", "4096 characters", "package:this.x/y", "corrupt weights"])
def test_odd_sources_are_400s_naming_the_source(server, admin, tmp_path, case):
    source = {"4096 characters": "/" + "a" * 4095,
              "corrupt weights": str(_corrupt_copy(server.models["bert"], tmp_path / "corrupt"))}.get(case, case)
    code = "invalid_weights" if case == "corrupt weights" else "invalid_source"
    for body in ({"model": "rt-odd", "source": source, "task": "embedding"}, {"model": "rt-odd", "source": source}):
        error = _refused(admin, body, 400, code, "source")
        assert error["type"] == "invalid_request_error" and len(error["message"]) < 600, error
    assert_others_served(server)


def test_custom_model_code_never_runs(server, admin, tmp_path):
    marker = tmp_path / "custom-code-ran"
    model = tmp_path / "custom"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "marker-model", "architectures": ["MarkerModel"],
        "auto_map": {"AutoConfig": "marker.MarkerConfig", "AutoModel": "marker.MarkerModel"}}))
    (model / "marker.py").write_text(f"open({str(marker)!r}, 'w').write('custom code ran')\n")
    started = time.monotonic()
    for body in ({"model": "rt-custom", "source": str(model)}, {"model": "rt-custom", "source": str(model), "task": "embedding"}):
        error = _refused(admin, body, 400, "custom_code_refused", "source")
        assert "trust_remote_code is off" in error["message"], error
    assert time.monotonic() - started < 30  # at once, not after minutes of `loading`
    assert_others_served(server)
    assert not marker.exists()


def test_resources_no_node_can_ever_offer_are_a_400(server, admin):
    error = _refused(admin, {"model": "rt-huge", "source": str(server.models["bert"]), "task": "embedding",
                             "options": {"num_cpus": 64}}, 400, "unschedulable", "options.num_cpus")
    assert "CPU 64" in error["message"], error
    assert_others_served(server)


@pytest.mark.parametrize("name", ["ingress", "gateway"])
def test_the_server_s_own_application_names_are_409s(server, admin, name):
    _refused(admin, {"model": name, "source": str(server.models["bert"]), "task": "embedding"}, 409, "reserved_name", "model")
    assert name in serve.status().applications  # still the server's application, untouched
    assert_others_served(server)


def _card(http: httpx.Client, model: str) -> dict | None:
    response = http.get(f"/v1/models/{model}")
    return response.json() if response.status_code == 200 else None


def _wait_card(http: httpx.Client, model: str, status: str, timeout_s: float) -> dict:
    deadline, card = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        card = _card(http, model)
        if card is not None and card["status"] == status:
            return card
        time.sleep(0.25)
    raise AssertionError(f"{model} never became {status}: last {card}")


def test_a_load_waiting_for_resources_is_pending_then_fails_at_its_timeout(server, admin):
    # Every CPU of the node: a node could hold it, but the config's replicas always hold some.
    cpus = ray.cluster_resources()["CPU"]
    user, _ = new_key(server)
    load = {"model": "rt-pending", "source": str(server.models["bert"]), "task": "embedding", "backend": "transformers",
            "load_timeout_s": 12, "options": {"num_cpus": cpus}}
    response = admin.post("/models/load", json=load)
    assert response.status_code == 202, response.text
    started = time.monotonic()
    try:
        with httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {user}"}) as http:
            seen = _wait_card(http, "rt-pending", "pending", timeout_s=12)
            assert seen["reason"] == f"waiting for resources: each replica needs CPU {cpus:g}, which no node has free"
            assert seen["error"] is None  # the detail is for admins
            # Each gateway replica hears of it at its own sync: the admin's answer may come from the other.
            detail = _wait_card(admin, "rt-pending", "pending", timeout_s=5)
            assert detail["reason"] == seen["reason"] and "the most free on one node: CPU" in detail["error"], detail
            failed = _wait_card(http, "rt-pending", "failed", timeout_s=30)
            took = time.monotonic() - started
            print(f"\nrt-pending: pending, then failed {took:.1f}s after the load (load_timeout_s 12)")
            assert took < 12 + 10, took
            assert failed["reason"] == "not ready within 12s (model_load_timeout_s); it was waiting for resources"
            assert failed["error"] is None
            assert "free on one node" in _card(admin, "rt-pending")["error"]
            refused = http.post("/v1/embeddings", json={"model": "rt-pending", "input": "x"})
            assert refused.status_code == 503 and "free on one node" not in refused.text, refused.text
        deadline = time.monotonic() + 30  # nothing left waiting: the application is deleted
        while "rt-pending" in serve.status().applications and time.monotonic() < deadline:
            time.sleep(0.25)
        assert "rt-pending" not in serve.status().applications
    finally:
        assert admin.post("/models/unload", json={"model": "rt-pending"}).status_code in (202, 404)
        deadline = time.monotonic() + 60
        while "rt-pending" in _records(admin) and time.monotonic() < deadline:
            time.sleep(0.25)
    assert "rt-pending" not in _records(admin)
    assert_others_served(server)
