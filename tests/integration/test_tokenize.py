"""/tokenize and /detokenize on real Ray Serve, on both generation engines and an embedding
model: the ids equal transformers' own tokenizer's, chat messages count as many tokens as chat
completions bill, text round-trips, bad input is a 4xx naming the field, and through the /gw
gateway: keys, per-key model access and the requests-per-minute limit."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.conftest import LLAMA_CONTEXT
from tests.integration.test_gateway import create_key

GENERATORS = ("tiny-llama", "tiny-llama-hf")
PROMPT = "The capital of France is Paris."
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Paris?"}]


@pytest.fixture(scope="module")
def tokenizers(server):
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(str(server.models[name])) for name in ("llama", "bert")}


@pytest.fixture(scope="module")
def http(server):
    with server.http() as client:
        yield client


def _ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("model", GENERATORS)
def test_prompt_tokens_are_the_tokenizers(http, tokenizers, model):
    llama = tokenizers["llama"]
    for special in (True, False):
        answer = _ok(http.post("/tokenize", json={"model": model, "prompt": PROMPT, "add_special_tokens": special}))
        expected = llama(PROMPT, add_special_tokens=special)["input_ids"]
        assert answer == {"count": len(expected), "max_model_len": LLAMA_CONTEXT, "tokens": expected, "token_strs": None}
    strs = _ok(http.post("/tokenize", json={"model": model, "prompt": PROMPT, "return_token_strs": True}))["token_strs"]
    assert strs == llama.convert_ids_to_tokens(llama(PROMPT)["input_ids"])
    assert _ok(http.post("/detokenize", json={"model": model, "tokens": llama(PROMPT)["input_ids"]})) == {"prompt": PROMPT}


@pytest.mark.parametrize("model", GENERATORS)
def test_messages_count_what_chat_bills(server, http, tokenizers, model):
    llama = tokenizers["llama"]
    answer = _ok(http.post("/tokenize", json={"model": model, "messages": MESSAGES}))
    rendered = llama.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert answer["tokens"] == llama(rendered, add_special_tokens=False)["input_ids"]
    assert answer["count"] == len(answer["tokens"]) and answer["max_model_len"] == LLAMA_CONTEXT
    chat = server.openai().chat.completions.create(model=model, messages=MESSAGES, max_tokens=1, temperature=0)
    assert chat.usage.prompt_tokens == answer["count"]
    # Without the assistant's opening: the conversation as it stands.
    bare = _ok(http.post("/tokenize", json={"model": model, "messages": MESSAGES, "add_generation_prompt": False}))
    rendered = llama.apply_chat_template(MESSAGES, add_generation_prompt=False, tokenize=False)
    assert bare["tokens"] == llama(rendered, add_special_tokens=False)["input_ids"] and bare["count"] < answer["count"]
    assert _ok(http.post("/detokenize", json={"model": model, "tokens": answer["tokens"]}))["prompt"] == llama.decode(
        answer["tokens"])


def test_an_embedding_model_tokenizes_prompts_only(server, http, tokenizers):
    bert = tokenizers["bert"]
    answer = _ok(http.post("/tokenize", json={"model": "tiny-bert", "prompt": PROMPT}))
    assert answer["tokens"] == bert(PROMPT)["input_ids"]  # with [CLS] ... [SEP]
    # Its max_model_len: the inputs it embeds, sentence-transformers' max_seq_length.
    limit = json.loads((server.models["bert"] / "sentence_bert_config.json").read_text())["max_seq_length"]
    assert answer["max_model_len"] == limit
    text = _ok(http.post("/detokenize", json={"model": "tiny-bert", "tokens": answer["tokens"]}))["prompt"]
    assert text == bert.decode(answer["tokens"])
    refused = http.post("/tokenize", json={"model": "tiny-bert", "messages": MESSAGES})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/tokenize", {"model": "tiny-llama"}, 400, "prompt"),
    ("/tokenize", {"model": "tiny-llama", "prompt": PROMPT, "messages": MESSAGES}, 400, "messages"),
    ("/tokenize", {"model": "tiny-llama", "prompt": PROMPT, "continue_final_message": True}, 400, "continue_final_message"),
    ("/tokenize", {"model": "no-such-model", "prompt": PROMPT}, 404, "model"),
    ("/tokenize", {"model": "tiny-llama", "messages": [{"role": "user", "content": "a"}, {"role": "nobody", "content": "b"}]},
     400, "messages[1].role"),
    ("/detokenize", {"model": "tiny-llama", "tokens": []}, 400, "tokens"),
    ("/detokenize", {"model": "tiny-llama-hf", "tokens": [5, 10**6]}, 400, "tokens"),  # past the vocabulary
    ("/detokenize", {"model": "no-such-model", "tokens": [5]}, 404, "model"),
])
def test_bad_input_is_a_4xx_naming_the_field(http, path, body, status, param):
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    # The model serves on.
    assert _ok(http.post("/detokenize", json={"model": "tiny-llama-hf", "tokens": [5]}))["prompt"]


def test_the_gateway_applies_keys_model_access_and_rpm(server):
    key, _ = create_key(server, models=["tiny-bert"], rpm=2)
    with httpx.Client(base_url=server.gateway_url, timeout=30) as gw:
        assert gw.post("/tokenize", json={"model": "tiny-bert", "prompt": PROMPT}).status_code == 401
        headers = {"Authorization": f"Bearer {key}"}
        hidden = gw.post("/tokenize", json={"model": "tiny-llama", "prompt": PROMPT}, headers=headers)
        assert hidden.status_code == 404 and "tiny-llama" in hidden.json()["error"]["message"]
        allowed = gw.post("/detokenize", json={"model": "tiny-bert", "tokens": [5]}, headers=headers)
        assert allowed.status_code == 200 and "x-cache" not in allowed.headers
        assert gw.post("/tokenize", json={"model": "tiny-bert", "prompt": PROMPT}, headers=headers).status_code == 200
        limited = gw.post("/tokenize", json={"model": "tiny-bert", "prompt": PROMPT}, headers=headers)  # the third
        assert limited.status_code == 429 and limited.json()["error"]["type"] == "requests"
