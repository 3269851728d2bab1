"""Safe defaults: the Ray dashboard on loopback unless HF_SERVER_DASHBOARD_HOST says otherwise, what
`hfserve serve` says about getting in, and /ready naming models only to a caller with a key. No Ray."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from contract.config import EnvOverrides, read_env
from serve_app.cli.deploy_plan import plan_deploy
from serve_app.cli.launcher import admin_key, dashboard_notes, dashboard_options
from serve_app.ingress.model_directory import AppState
from serve_app.state.keys import NewKey, read_admin_key_file
from tests.conftest import ROOT
from tests.unit.fakes import make_app


def test_the_dashboard_binds_loopback_whatever_the_http_host(monkeypatch):
    monkeypatch.delenv("HF_SERVER_DASHBOARD_HOST", raising=False)
    for http_host in ("0.0.0.0", "::1", "10.0.0.5"):
        env = read_env().model_copy(update={"host": http_host})
        assert dashboard_options(env) == {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": 8265}


def test_hf_server_dashboard_host_opens_it_where_asked(monkeypatch):
    monkeypatch.setenv("HF_SERVER_DASHBOARD_HOST", "10.0.0.5")
    monkeypatch.setenv("HF_SERVER_DASHBOARD_PORT", "9265")
    assert dashboard_options(read_env()) | {"include_dashboard": True} == {
        "include_dashboard": True, "dashboard_host": "10.0.0.5", "dashboard_port": 9265}


def test_serve_says_where_the_dashboard_is_and_how_to_get_the_token():
    notes = dashboard_notes("http://127.0.0.1:8265", "127.0.0.1", {"RAY_AUTH_MODE": "token"})
    assert notes[0].endswith("http://127.0.0.1:8265")
    assert "`ray get-auth-token`" in notes[1]
    assert not any("warning" in note for note in notes)


def test_serve_warns_when_ray_token_auth_is_off_or_the_dashboard_is_not_on_loopback():
    off = dashboard_notes("http://127.0.0.1:8265", "127.0.0.1", {"RAY_AUTH_MODE": "disabled"})
    assert any("token authentication is off (RAY_AUTH_MODE=disabled)" in note for note in off)
    wide = dashboard_notes("http://10.0.0.5:8265", "0.0.0.0", {"RAY_AUTH_MODE": "token"})
    assert any("warning: the dashboard listens on 0.0.0.0" in note for note in wide)


def test_serve_reads_readiness_with_the_admin_key_it_created(tmp_path):
    plan = plan_deploy(ROOT / "serve_config.yaml", EnvOverrides(state_dir=tmp_path))
    assert admin_key(plan, EnvOverrides(state_dir=tmp_path)) is None  # none created yet
    (tmp_path / "admin.key").write_text("hf_" + "a" * 43 + "\n")
    assert admin_key(plan, EnvOverrides(state_dir=tmp_path)) == read_admin_key_file(tmp_path)
    assert admin_key(plan, EnvOverrides(state_dir=tmp_path, api_key="hf_" + "b" * 43)) == "hf_" + "b" * 43


@pytest.fixture
def keyed(serve, tmp_path):
    """The ingress with keys on: (client, admin key, a key limited to chat-model). A test that
    wants a model not ready sets `serve.states` before asking for this."""
    app, _, core = make_app(tmp_path, serve)
    limited, _ = core.store.create(NewKey(name="chat-only", models=["chat-model"]))
    with TestClient(app) as client:
        yield client, read_admin_key_file(tmp_path), limited


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_ready_without_a_key_says_ready_with_counts_and_no_names(keyed):
    client, admin, _ = keyed
    for headers in ({}, _as("hf_" + "x" * 43), {"Authorization": "Basic nope"}):  # none, unknown, malformed
        response = client.get("/ready", headers=headers)
        assert response.status_code == 200
        assert response.json() == {"status": "ready", "models_ready": 2, "models_total": 2}
    named = client.get("/ready", headers=_as(admin)).json()
    assert named == {"status": "ready", "models_ready": 2, "models_total": 2,
                     "models": {"chat-model": "ready", "embed-model": "ready"}}


def test_a_key_sees_only_the_models_it_may_use(keyed):
    client, _, limited = keyed
    assert client.get("/ready", headers={"X-API-Key": limited}).json()["models"] == {"chat-model": "ready"}


@pytest.fixture
def failed_embed(serve):
    serve.states["embed-model"] = AppState("embed-model", "DEPLOY_FAILED", "ImportError: no module named secret_lib")


def test_not_ready_without_a_key_gives_counts_and_no_names(failed_embed, keyed):
    client, admin, limited = keyed
    hidden = client.get("/ready")
    assert hidden.status_code == 503
    body = hidden.json()
    assert body["status"] == "not_ready" and (body["models_ready"], body["models_total"]) == (1, 2)
    assert "models" not in body and "not_ready" not in body
    assert body["error"]["code"] == "models_not_ready"
    assert body["error"]["message"] == "1 of 2 models are not ready yet."
    assert "embed-model" not in hidden.text and "secret_lib" not in hidden.text
    named = client.get("/ready", headers=_as(admin)).json()
    assert named["not_ready"] == ["embed-model"] and named["models"]["embed-model"] == "failed"
    assert "embed-model (failed: ImportError" in named["error"]["message"]
    other = client.get("/ready", headers=_as(limited))  # a key for chat-model only: not the failed one's name
    assert other.json()["models"] == {"chat-model": "ready"} and other.json()["not_ready"] == []
    assert "embed-model" not in other.text


def test_the_openapi_document_describes_the_counts(keyed):
    client, _, _ = keyed
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"models_ready", "models_total"} <= set(schemas["Ready"]["required"])
    assert "models" not in schemas["Ready"]["required"]
    assert {"models_ready", "models_total"} <= set(schemas["NotReady"]["required"])
