"""/tokenize and /detokenize through the real ingress and gateway over fake models (a fake
tokenizer: a text's tokens are its characters' codes) and an in-process state core: the request
shapes, keys, model access, the requests-per-minute limit, the breaker, and the 4xx cases. No Ray."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from contract.endpoints import ENDPOINTS
from contract.tokenize_protocol import TokenizeRequest
from serve_app.state.keys import read_admin_key_file
from tests.unit.fakes import Clock, make_app

pytestmark = pytest.mark.models({"chat-model": "text-generation", "embed-model": "embedding"})

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gw(serve, tmp_path):
    app, gateway, core = make_app(tmp_path, serve, key_cache_ttl_s=0.001, state_clock=Clock(1000.0))
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
        yield client, gateway, admin


def new_key(client, admin, **fields) -> dict[str, str]:
    response = client.post("/admin/keys", json={"name": "tester", **fields}, headers=admin)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


def codes(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_prompt_messages_and_back(gw, serve):
    client, _, admin = gw
    prompt = client.post("/tokenize", json={"model": "chat-model", "prompt": "hey"}, headers=admin)
    assert prompt.status_code == 200, prompt.text
    # add_special_tokens defaults to true for a prompt: the fake's BOS (1) first.
    assert prompt.json() == {"count": 4, "max_model_len": 2048, "tokens": [1, *codes("hey")], "token_strs": None}
    plain = client.post("/tokenize", json={"model": "chat-model", "prompt": "hey", "add_special_tokens": False,
                                           "return_token_strs": True}, headers=admin).json()
    assert plain["tokens"] == codes("hey") and plain["token_strs"] == ["h", "e", "y"] and plain["count"] == 3
    # Messages: add_special_tokens defaults to false, add_generation_prompt to true.
    chat = client.post("/tokenize", json={"model": "chat-model", "messages": MSG}, headers=admin).json()
    assert chat["tokens"] == codes("user: hi\nassistant: ")
    no_turn = client.post("/tokenize", json={"model": "chat-model", "messages": MSG, "add_generation_prompt": False},
                          headers=admin).json()
    assert no_turn["tokens"] == codes("user: hi\n")
    back = client.post("/detokenize", json={"model": "chat-model", "tokens": codes("héllo")}, headers=admin)
    assert back.status_code == 200 and back.json() == {"prompt": "héllo"}
    # Every model with a tokenizer answers, embedding models too.
    assert client.post("/tokenize", json={"model": "embed-model", "prompt": "a"}, headers=admin).status_code == 200
    assert client.post("/detokenize", json={"model": "embed-model", "tokens": [97]}, headers=admin).json() == {"prompt": "a"}
    # No response cache: each request reaches the model, and says nothing of a cache.
    model = serve.models["chat-model"]
    before = model.calls
    for _ in range(2):
        again = client.post("/tokenize", json={"model": "chat-model", "prompt": "hey"}, headers=admin)
        assert "x-cache" not in again.headers
    assert model.calls == before + 2


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {"model": "chat-model"}, "prompt"),  # neither prompt nor messages
    ("/tokenize", {"model": "chat-model", "prompt": None}, "prompt"),
    ("/tokenize", {"model": "chat-model", "prompt": "a", "messages": MSG}, "messages"),  # both
    ("/tokenize", {"model": "chat-model", "messages": []}, "messages"),
    ("/tokenize", {"model": "chat-model", "prompt": 5}, "prompt"),
    ("/tokenize", {"model": "chat-model", "messages": [{"role": "nobody", "content": "a"}]}, "messages[0].role"),
    ("/tokenize", {"prompt": "a"}, "model"),
    ("/tokenize", {"model": "chat-model", "prompt": "a", "chat_template": "x"}, "chat_template"),  # unknown: refused
    ("/detokenize", {"model": "chat-model", "tokens": []}, "tokens"),
    ("/detokenize", {"model": "chat-model", "tokens": [-1]}, "tokens[0]"),
    ("/detokenize", {"model": "chat-model", "tokens": ["a"]}, "tokens[0]"),
    ("/detokenize", {"model": "chat-model", "tokens": [97, 256]}, "tokens"),  # past the vocabulary: the model's 400
    ("/detokenize", {"model": "chat-model", "tokens": [97], "skip_special_tokens": True}, "skip_special_tokens"),
])
def test_bad_requests_are_400s_naming_the_field(gw, path, body, param):
    client, _, admin = gw
    response = client.post(path, json=body, headers=admin)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()


def test_messages_to_a_model_without_chat(gw):
    client, _, admin = gw
    response = client.post("/tokenize", json={"model": "embed-model", "messages": MSG}, headers=admin)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_unknown_model_and_model_access(gw):
    client, _, admin = gw
    assert client.post("/tokenize", json={"model": "nope", "prompt": "a"}, headers=admin).status_code == 404
    key = new_key(client, admin, models=["embed-model"])
    for path, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [97]})):
        refused = client.post(path, json={"model": "chat-model", **body}, headers=key)
        assert refused.status_code == 404
        assert refused.json()["error"]["message"] == "The model 'chat-model' does not exist or you do not have access to it."
        assert client.post(path, json={"model": "embed-model", **body}, headers=key).status_code == 200
    assert client.post("/tokenize", json={"model": "chat-model", "prompt": "a"}).status_code == 401
    bad = {"Authorization": "Bearer hf_" + "x" * 43}
    assert client.post("/detokenize", json={"model": "chat-model", "tokens": [97]}, headers=bad).status_code == 401


def test_requests_per_minute_apply(gw):
    client, _, admin = gw
    key = new_key(client, admin, rpm=2, tpm=1)  # no tokens are reserved: a tpm of 1 does not stop them
    first = client.post("/tokenize", json={"model": "chat-model", "prompt": "a long prompt"}, headers=key)
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "1"
    assert client.post("/detokenize", json={"model": "chat-model", "tokens": [97]}, headers=key).status_code == 200
    limited = client.post("/tokenize", json={"model": "chat-model", "prompt": "a"}, headers=key)
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "requests"


def test_a_model_failure_is_a_5xx_and_a_success_never_resets_the_breaker(gw, serve, monkeypatch):
    client, gateway, admin = gw
    model = serve.models["chat-model"]
    model.fail = True
    assert client.post("/tokenize", json={"model": "chat-model", "prompt": "a"}, headers=admin).status_code == 500
    model.fail = False
    reported = []
    monkeypatch.setattr(gateway.breakers, "succeeded", lambda name: reported.append(name))
    assert client.post("/tokenize", json={"model": "chat-model", "prompt": "a"}, headers=admin).status_code == 200
    assert reported == []  # a tokenizer's answer says nothing of the engine


def test_the_endpoints_are_in_the_table_and_the_openapi_document(gw):
    client, _, admin = gw
    assert ENDPOINTS["tokenize"].path == "/tokenize" and ENDPOINTS["detokenize"].method == "detokenize"
    schema = client.get("/openapi.json").json()
    for path, model in (("/tokenize", "TokenizeRequest"), ("/detokenize", "DetokenizeRequest")):
        operation = schema["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(model)
        assert {"400", "401", "404", "429"} <= set(operation["responses"])
    assert schema["components"]["schemas"]["TokenizeRequest"]["additionalProperties"] is False


def test_add_special_tokens_defaults_by_shape():
    assert TokenizeRequest(model="m", prompt="a").special_tokens is True
    assert TokenizeRequest(model="m", messages=MSG).special_tokens is False
    assert TokenizeRequest(model="m", messages=MSG, add_special_tokens=True).special_tokens is True
    assert TokenizeRequest(model="m", prompt="a", add_special_tokens=False).special_tokens is False
