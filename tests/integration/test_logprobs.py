"""Log-probabilities on both engines over HTTP: chat's logprobs (whole and streamed) and the
completions' logprobs with text offsets are the tiny model's own, as transformers computes them
in this test (greedy, raw log-softmax); the transformers engine gives alternatives, OpenVINO GenAI
refuses them with a 400 naming the field and goes on serving; out-of-range counts are 400s."""

from __future__ import annotations

import json

import pytest

ENGINES = ["tiny-llama", "tiny-llama-hf"]  # OpenVINO GenAI (f32 in conftest), transformers
MSG = [{"role": "user", "content": "The capital of France is"}]
PROMPT = "The capital of France is"
TOKENS = 8
CLOSE = 1e-3


@pytest.fixture(scope="module")
def reference(server):
    """greedy(prompt ids, top) -> [(token id, log-probability, top log-probabilities)] per token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(server.models["llama"])
    model = AutoModelForCausalLM.from_pretrained(server.models["llama"], dtype=torch.float32).eval()

    def greedy(prompt_ids: list[int], top: int = 0) -> list[tuple[int, float, list[float]]]:
        ids, out = list(prompt_ids), []
        with torch.inference_mode():
            for _ in range(TOKENS):
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
                token = int(logprobs.argmax())
                out.append((token, float(logprobs[token]), logprobs.topk(top).values.tolist() if top else []))
                ids.append(token)
        return out

    chat_ids = tokenizer(tokenizer.apply_chat_template(MSG, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"]
    return {"chat": greedy(chat_ids, 3), "completion": greedy(tokenizer(PROMPT)["input_ids"], 5),
            "decode": lambda steps: tokenizer.decode([token for token, _, _ in steps])}


def _post(server, path: str, body: dict):
    with server.http() as http:
        return http.post(path, json={"temperature": 0, "max_tokens": TOKENS, **body})


def _stream(server, path: str, body: dict) -> list[dict]:
    with server.http() as http, http.stream("POST", path, json={"temperature": 0, "max_tokens": TOKENS,
                                                                  "stream": True, **body}) as response:
        assert response.status_code == 200
        lines = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


@pytest.mark.parametrize("model", ENGINES)
def test_chat_logprobs_are_the_models_own_whole_and_streamed(server, reference, model):
    response = _post(server, "/v1/chat/completions", {"model": model, "messages": MSG, "logprobs": True})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None
    expected = reference["chat"]
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"] == reference["decode"](expected)
    assert [entry["logprob"] for entry in content] == pytest.approx([lp for _, lp, _ in expected], abs=CLOSE)
    assert all(entry["top_logprobs"] == [] and entry["bytes"] == list(entry["token"].encode()) for entry in content)

    chunks = _stream(server, "/v1/chat/completions", {"model": model, "messages": MSG, "logprobs": True})
    streamed = [entry for chunk in chunks for c in chunk["choices"] if c["logprobs"] for entry in c["logprobs"]["content"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content], abs=CLOSE)


@pytest.mark.parametrize("model", ENGINES)
def test_completion_logprobs_give_each_tokens_text_offset(server, reference, model):
    response = _post(server, "/v1/completions", {"model": model, "prompt": PROMPT, "logprobs": 0})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    logprobs, expected = choice["logprobs"], reference["completion"]
    assert "".join(logprobs["tokens"]) == choice["text"] == reference["decode"](expected)
    assert logprobs["text_offset"] == [len("".join(logprobs["tokens"][:i])) for i in range(TOKENS)]
    assert logprobs["token_logprobs"] == pytest.approx([lp for _, lp, _ in expected], abs=CLOSE)
    assert [list(top.items()) for top in logprobs["top_logprobs"]] == [
        [(token, value)] for token, value in zip(logprobs["tokens"], logprobs["token_logprobs"], strict=True)]


def test_the_transformers_engine_gives_alternatives(server, reference):
    chunks = _stream(server, "/v1/completions", {"model": "tiny-llama-hf", "prompt": PROMPT, "logprobs": 5})
    parts = [c["logprobs"] for chunk in chunks for c in chunk["choices"] if c["logprobs"]]
    tokens = [token for part in parts for token in part["tokens"]]
    offsets = [offset for part in parts for offset in part["text_offset"]]
    tops = [top for part in parts for top in part["top_logprobs"]]
    assert offsets == [len("".join(tokens[:i])) for i in range(TOKENS)]  # continued across chunks
    for top, (_, logprob, best) in zip(tops, reference["completion"], strict=True):
        assert max(top.values()) == pytest.approx(logprob, abs=CLOSE)  # greedy: the likeliest
        # Its alternatives by their text (two tokens may read the same): each one of the 5 likeliest.
        assert all(any(abs(value - b) < CLOSE for b in best) for value in top.values()) and len(top) <= 6

    response = _post(server, "/v1/chat/completions",
                     {"model": "tiny-llama-hf", "messages": MSG, "logprobs": True, "top_logprobs": 3})
    content = response.json()["choices"][0]["logprobs"]["content"]
    for entry, (_, _, best) in zip(content, reference["chat"], strict=True):
        assert [alt["logprob"] for alt in entry["top_logprobs"]] == pytest.approx(best, abs=CLOSE)
        assert entry["top_logprobs"][0]["token"] == entry["token"]


def _error(response) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["param"], error["code"]


def test_openvino_refuses_alternatives_naming_the_field_and_goes_on(server):
    chat = _post(server, "/v1/chat/completions",
                 {"model": "tiny-llama", "messages": MSG, "logprobs": True, "top_logprobs": 2})
    assert _error(chat) == (400, "top_logprobs", "unsupported_parameter") and "openvino" in chat.text
    completion = _post(server, "/v1/completions", {"model": "tiny-llama", "prompt": PROMPT, "logprobs": 2})
    assert _error(completion) == (400, "logprobs", "unsupported_parameter")
    after = _post(server, "/v1/completions", {"model": "tiny-llama", "prompt": PROMPT, "logprobs": 0})
    assert after.status_code == 200 and len(after.json()["choices"][0]["logprobs"]["tokens"]) == TOKENS


def test_out_of_range_requests_and_capabilities(server):
    over = _post(server, "/v1/chat/completions",
                 {"model": "tiny-llama-hf", "messages": MSG, "logprobs": True, "top_logprobs": 21})
    assert _error(over)[:2] == (400, "top_logprobs")
    echo = _post(server, "/v1/completions", {"model": "tiny-llama-hf", "prompt": PROMPT, "logprobs": 1, "echo": True})
    assert _error(echo) == (400, "echo", "unsupported_parameter")
    with server.http() as http:
        cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert {name: (cards[name]["capabilities"]["logprobs"], cards[name]["capabilities"]["top_logprobs"])
            for name in ENGINES} == {"tiny-llama": (True, 0), "tiny-llama-hf": (True, 20)}
