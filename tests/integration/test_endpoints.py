"""/v1/models, /health, /ready and /status, including a model that is not ready."""

from __future__ import annotations

import time

import pytest
from ray import serve

from contract.config import ModelAppArgs
from deployments.server import model_server_deployment
from tests.integration.conftest import MODELS


def test_model_card(server):
    with server.http() as http:
        card = http.get("/v1/models/tiny-bert").json()
        missing = http.get("/v1/models/nope")
    assert card["id"] == "tiny-bert"
    assert card["object"] == "model"
    assert card["task"] == "embedding"
    assert card["status"] == "ready"
    assert card["owned_by"] == "hfserve"
    assert abs(card["created"] - time.time()) < 3600
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_openai_client_lists_models(server):
    ids = sorted(m.id for m in server.openai().models.list())
    assert ids == sorted(MODELS)
    assert server.openai().models.retrieve("tiny-llama").id == "tiny-llama"


def test_health_ready_status(server):
    with server.http() as http:
        assert http.get("/health").json()["status"] == "ok"
        ready = http.get("/ready")
        status = http.get("/status").json()
    assert ready.status_code == 200
    assert ready.json()["models"] == {m: "ready" for m in MODELS}  # keys are off here: every caller sees names
    assert (ready.json()["models_ready"], ready.json()["models_total"]) == (len(MODELS), len(MODELS))
    by_id = {m["id"]: m for m in status["models"]}
    assert by_id["tiny-llama"]["backend"] == "openvino"
    assert by_id["tiny-llama-hf"]["backend"] == "transformers"
    assert by_id["tiny-llama"]["max_model_len"] == 512
    assert by_id["tiny-llama"]["engine"]["running_requests"] == 0


@pytest.fixture
def unschedulable_model(server):
    """A model application that can never start (it asks for more CPUs than exist)."""
    args = ModelAppArgs(source=str(server.models["bert"]), task="embedding", backend="openvino")
    target = serve.RunTarget(
        model_server_deployment().options(ray_actor_options={"num_cpus": 64}).bind(args), name="tiny-late", route_prefix=None
    )
    serve.run_many([target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    yield "tiny-late"
    serve.delete("tiny-late")


def test_model_not_ready_is_reported_and_refused(server, unschedulable_model):
    with server.http() as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = http.get("/ready")
            if "tiny-late" in ready.json().get("models", {}):
                break
            time.sleep(0.2)
        assert ready.status_code == 503
        body = ready.json()
        assert body["not_ready"] == ["tiny-late"]
        assert body["models"]["tiny-late"] == "loading"
        assert "tiny-late" in body["error"]["message"]
        refused = http.post("/v1/embeddings", json={"model": "tiny-late", "input": "x"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "model_not_ready"
        assert int(refused.headers["retry-after"]) > 0
        card = http.get("/v1/models/tiny-late").json()
        assert card["status"] == "loading" and card["task"] is None


def test_ready_again_after_the_model_is_removed(server):
    with server.http() as http:
        deadline = time.monotonic() + 30
        while http.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert http.get("/ready").status_code == 200
