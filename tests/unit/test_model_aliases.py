"""Model aliases over the fakes: a name clients use for a model, set in the ingress args or at run
time; requests through it are served, limited and cached as the model's, and every bad alias is
a 4xx naming the field that stores nothing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.ingress_args import IngressArgs
from tests.unit.fakes import admin_client
from tests.unit.test_gateway import CHAT, bearer, new_key


@pytest.fixture
def api(serve, tmp_path):
    with admin_client(tmp_path, serve, aliases={"assistant": "chat-model"}) as api:
        yield api


def test_an_alias_serves_as_its_model_and_a_key_may_name_either(api):
    client, core, admin = api
    put = client.put("/models/aliases/chat", json={"model": "chat-model"}, headers=admin)
    assert put.status_code == 200, put.text
    assert core.models.aliases() == {"chat": "chat-model"}
    key, _ = new_key(client, admin, models=["chat"])  # the alias only
    answer = client.post("/v1/chat/completions", json={**CHAT, "model": "chat"}, headers=bearer(key))
    assert answer.status_code == 200 and answer.json()["model"] == "chat-model"  # named by the model that served
    configured = client.post("/v1/chat/completions", json={**CHAT, "model": "assistant"}, headers=admin)
    assert configured.status_code == 200 and configured.json()["model"] == "chat-model"
    listed = {card["id"]: card for card in client.get("/v1/models", headers=admin).json()["data"]}
    assert listed["chat"]["alias_of"] == "chat-model" and listed["assistant"]["alias_of"] == "chat-model"
    assert listed["chat-model"]["alias_of"] is None
    other, _ = new_key(client, admin, models=["embed-model"])
    refused = client.post("/v1/chat/completions", json={**CHAT, "model": "chat"}, headers=bearer(other))
    assert refused.status_code == 404 and "chat-model" not in refused.text  # the alias's model stays unnamed
    seen_by_key = [card["id"] for card in client.get("/v1/models", headers=bearer(key)).json()["data"]]
    assert seen_by_key == ["chat"]
    assert client.get("/v1/models/chat", headers=bearer(key)).json()["alias_of"] == "chat-model"
    rows = client.get("/models/aliases", headers=admin).json()["data"]
    assert rows == [{"alias": "assistant", "model": "chat-model", "source": "config"},
                    {"alias": "chat", "model": "chat-model", "source": "runtime"}]


def test_a_request_through_an_alias_shares_the_models_cache(api):
    client, _, admin = api
    client.put("/models/aliases/chat", json={"model": "chat-model"}, headers=admin)
    first = client.post("/v1/chat/completions", json=CHAT, headers=admin)
    again = client.post("/v1/chat/completions", json={**CHAT, "model": "chat"}, headers=admin)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")


def test_an_alias_is_repointed_and_removed(api):
    client, core, admin = api
    client.put("/models/aliases/chat", json={"model": "chat-model"}, headers=admin)
    moved = client.put("/models/aliases/chat", json={"model": "embed-model"}, headers=admin)
    assert moved.status_code == 200 and core.models.aliases() == {"chat": "embed-model"}
    embedded = client.post("/v1/embeddings", json={"model": "chat", "input": "x"}, headers=admin)
    assert embedded.status_code == 200 and embedded.json()["model"] == "embed-model"
    assert client.delete("/models/aliases/chat", headers=admin).status_code == 200
    gone = client.post("/v1/embeddings", json={"model": "chat", "input": "x"}, headers=admin)
    assert gone.status_code == 404 and core.models.aliases() == {}
    assert client.delete("/models/aliases/chat", headers=admin).status_code == 404


@pytest.mark.parametrize(("alias", "body", "status", "param"), [
    ("chat", {"model": "no-such-model"}, 404, "model"),  # names no model
    ("chat-model", {"model": "embed-model"}, 409, "alias"),  # a model's id
    ("chat", {"model": "assistant"}, 409, "model"),  # an alias of an alias
    ("assistant", {"model": "embed-model"}, 409, "alias"),  # the config file's
    ("bad alias!", {"model": "chat-model"}, 400, "alias"),
    ("chat", {"model": "chat-model", "ttl": 5}, 400, "ttl"),
    ("chat", {"model": ""}, 400, "model"),
])
def test_a_bad_alias_is_a_4xx_naming_the_field_and_stores_nothing(api, alias, body, status, param):
    client, core, admin = api
    response = client.put(f"/models/aliases/{alias}", json=body, headers=admin)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert core.models.aliases() == {}


def test_a_cycle_through_the_run_time_aliases_is_refused(api):
    client, core, admin = api
    client.put("/models/aliases/chat", json={"model": "chat-model"}, headers=admin)
    response = client.put("/models/aliases/chat2", json={"model": "chat"}, headers=admin)
    assert response.status_code == 409 and response.json()["error"]["code"] == "alias_of_alias"
    assert core.models.aliases() == {"chat": "chat-model"}


def test_only_an_admin_key_sets_aliases(api):
    client, core, admin = api
    key, _ = new_key(client, admin)
    assert client.put("/models/aliases/chat", json={"model": "chat-model"}, headers=bearer(key)).status_code == 403
    assert core.models.aliases() == {}


@pytest.mark.parametrize(("aliases", "message"), [
    ({"a": "b", "b": "chat-model"}, "which is an alias itself"),
    ({"bad alias": "chat-model"}, "not a valid model id"),
])
def test_bad_config_aliases_fail_the_deploy_naming_the_field(aliases, message):
    with pytest.raises(ValidationError) as error:
        IngressArgs(aliases=aliases)
    assert error.value.errors()[0]["loc"][0] == "aliases" and message in str(error.value)


def test_the_state_keeps_a_models_alias_from_unloading_or_eviction(tmp_path):
    from contract.lifecycle import RuntimeModel
    from serve_app.state.core import StateCore, StateSettings

    core = StateCore(StateSettings.from_args(IngressArgs(state_dir=tmp_path)))
    for name in ("v1", "v2"):
        core.models.put(RuntimeModel(model=name, state="ready", args={"source": "/m", "task": "embedding"},
                                     requested_at=1.0, estimated_bytes=10))
    version = core.models.version
    assert core.alias_set("chat", "v1") == {"alias": "chat", "model": "v1"}
    assert core.models.version > version  # the replicas' next sync carries it
    assert core.sync(0, models_version=version)["models"]["aliases"] == {"chat": "v1"}
    assert core.models_unload("v1")["refused"]["code"] == "model_has_alias"
    assert core.models.get("v1").state == "ready"
    new = RuntimeModel(model="v3", args={"source": "/m", "task": "embedding"}, requested_at=2.0, estimated_bytes=10)
    result = core.models_load(new, [], max_models=2, budget_bytes=None)
    assert result["evicted"] == ["v2"]  # v1 is older-used, but the alias keeps it
    assert core.models_load(RuntimeModel(model="chat", args={"source": "/m", "task": "embedding"}, requested_at=3.0),
                            [], None, None)["error"]["code"] == "alias_exists"
    assert core.alias_set("chat", "v3") == {"alias": "chat", "model": "v3"}
    assert core.models_unload("v1")["state"] == "unloading"
    assert StateCore(StateSettings.from_args(IngressArgs(state_dir=tmp_path))).models.aliases() == {"chat": "v3"}
