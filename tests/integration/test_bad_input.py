"""Every bad input is a clear 4xx in the OpenAI error shape, never a 500, and leaves the
server exactly as it was: the same request afterwards gives the same answer and no
sequence is left running in the engine."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.integration.conftest import LLAMA_CONTEXT, MAX_BODY

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MSG = [{"role": "user", "content": "hello"}]
LONG_TEXT = "Paris " * (LLAMA_CONTEXT + 10)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]

CASES = [
    # (id, path, body, status, param, code)
    ("unknown model", CHAT, {"model": "nope", "messages": MSG}, 404, "model", "model_not_found"),
    ("unknown embedding model", EMBEDDINGS, {"model": "nope", "input": "x"}, 404, "model", "model_not_found"),
    ("missing model", CHAT, {"messages": MSG}, 400, "model", None),
    ("empty messages", CHAT, {"model": "tiny-llama", "messages": []}, 400, "messages", None),
    ("messages not a list", CHAT, {"model": "tiny-llama", "messages": "hello"}, 400, "messages", None),
    ("bad role", CHAT, {"model": "tiny-llama", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", None),
    ("content wrong type", CHAT, {"model": "tiny-llama", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
    ("temperature below 0", CHAT, {"model": "tiny-llama", "messages": MSG, "temperature": -0.5}, 400, "temperature", None),
    ("temperature above 2", CHAT, {"model": "tiny-llama", "messages": MSG, "temperature": 2.5}, 400, "temperature", None),
    ("temperature not a number", CHAT, {"model": "tiny-llama", "messages": MSG, "temperature": "hot"}, 400, "temperature", None),
    ("max_tokens 0", CHAT, {"model": "tiny-llama", "messages": MSG, "max_tokens": 0}, 400, "max_tokens", None),
    ("max_completion_tokens 0", CHAT, {"model": "tiny-llama", "messages": MSG, "max_completion_tokens": 0}, 400, "max_completion_tokens", None),
    ("n 0", CHAT, {"model": "tiny-llama", "messages": MSG, "n": 0}, 400, "n", None),
    ("n too large", CHAT, {"model": "tiny-llama", "messages": MSG, "n": 1000}, 400, "n", None),
    ("top_p 0", CHAT, {"model": "tiny-llama", "messages": MSG, "top_p": 0}, 400, "top_p", None),
    ("presence_penalty 3", CHAT, {"model": "tiny-llama", "messages": MSG, "presence_penalty": 3}, 400, "presence_penalty", None),
    ("too many stops", CHAT, {"model": "tiny-llama", "messages": MSG, "stop": ["a"] * 17}, 400, "stop", None),
    ("empty stop", CHAT, {"model": "tiny-llama", "messages": MSG, "stop": [""]}, 400, "stop", None),
    ("negative seed", CHAT, {"model": "tiny-llama", "messages": MSG, "seed": -1}, 400, "seed", None),
    ("stream_options without stream", CHAT, {"model": "tiny-llama", "messages": MSG, "stream_options": {"include_usage": True}}, 400, "stream_options", None),
    ("tools without a tool parser", CHAT, {"model": "tiny-llama", "messages": MSG, "tools": TOOLS}, 400, "tool_choice", "unsupported_parameter"),
    ("tool_choice naming no tool", CHAT, {"model": "tiny-llama", "messages": MSG, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "tool_choice", None),
    ("tool_choice without tools", CHAT, {"model": "tiny-llama", "messages": MSG, "tool_choice": "required"}, 400, "tool_choice", None),
    ("tool with a broken schema", CHAT, {"model": "tiny-llama-hf", "messages": MSG, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}], "tool_choice": "required"}, 400, "tools", "invalid_structured_output"),
    ("tool message without its call id", CHAT, {"model": "tiny-llama", "messages": [{"role": "tool", "content": "4"}]}, 400, "messages[0]", None),
    ("top_logprobs without logprobs", CHAT, {"model": "tiny-llama", "messages": MSG, "top_logprobs": 2}, 400, "top_logprobs", None),
    ("json_schema without a schema", CHAT, {"model": "tiny-llama", "messages": MSG, "response_format": {"type": "json_schema"}}, 400, "response_format", None),
    ("two structured outputs", CHAT, {"model": "tiny-llama", "messages": MSG, "structured_outputs": {"regex": "a", "choice": ["b"]}}, 400, "structured_outputs", None),
    ("response_format and structured_outputs", CHAT, {"model": "tiny-llama-hf", "messages": MSG, "structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, 400, "response_format", None),
    ("chat on embedding model", CHAT, {"model": "tiny-bert", "messages": MSG}, 400, "model", "model_not_supported"),
    ("chat prompt over context", CHAT, {"model": "tiny-llama", "messages": [{"role": "user", "content": LONG_TEXT}]}, 400, "messages", "context_length_exceeded"),
    ("chat stream over context", CHAT, {"model": "tiny-llama", "messages": [{"role": "user", "content": LONG_TEXT}], "stream": True}, 400, "messages", "context_length_exceeded"),
    ("prompt + max_tokens over context", CHAT, {"model": "tiny-llama", "messages": MSG, "max_tokens": LLAMA_CONTEXT}, 400, "messages", "context_length_exceeded"),
    ("hf engine over context", CHAT, {"model": "tiny-llama-hf", "messages": [{"role": "user", "content": LONG_TEXT}]}, 400, "messages", "context_length_exceeded"),
    ("completion over context", COMPLETIONS, {"model": "tiny-llama", "prompt": LONG_TEXT}, 400, "prompt", "context_length_exceeded"),
    ("completion empty prompt list", COMPLETIONS, {"model": "tiny-llama", "prompt": []}, 400, "prompt", None),
    ("completion token out of vocab", COMPLETIONS, {"model": "tiny-llama", "prompt": [1, 2, 999999]}, 400, "prompt", None),
    # The rule that failed, at the item that broke it (not "prompt: Input should be a valid string").
    ("completion negative token", COMPLETIONS, {"model": "tiny-llama", "prompt": [1, -2]}, 400, "prompt[1]", None),
    ("completion empty string", COMPLETIONS, {"model": "tiny-llama", "prompt": ""}, 400, "prompt", None),
    ("suffix", COMPLETIONS, {"model": "tiny-llama", "prompt": "x", "suffix": "y"}, 400, "suffix", None),
    ("unknown chat field", CHAT, {"model": "tiny-llama", "messages": MSG, "guided_json": {}}, 400, "guided_json", "unknown_parameter"),
    ("unknown completion field", COMPLETIONS, {"model": "tiny-llama", "prompt": "x", "best_of_n": 2}, 400, "best_of_n", "unknown_parameter"),
    ("top_k -2", CHAT, {"model": "tiny-llama", "messages": MSG, "top_k": -2}, 400, "top_k", None),
    ("min_p above 1", CHAT, {"model": "tiny-llama", "messages": MSG, "min_p": 1.5}, 400, "min_p", None),
    ("repetition_penalty 0", CHAT, {"model": "tiny-llama", "messages": MSG, "repetition_penalty": 0}, 400, "repetition_penalty", None),
    ("min_tokens over max_tokens", CHAT, {"model": "tiny-llama", "messages": MSG, "max_tokens": 2, "min_tokens": 3}, 400, "min_tokens", None),
    ("hf min_tokens over max_tokens", COMPLETIONS, {"model": "tiny-llama-hf", "prompt": "x", "max_tokens": 2, "min_tokens": 3}, 400, "min_tokens", None),
    ("stop_token_ids out of vocab", CHAT, {"model": "tiny-llama", "messages": MSG, "stop_token_ids": [999999]}, 400, "stop_token_ids", None),
    ("logit_bias on openvino", CHAT, {"model": "tiny-llama", "messages": MSG, "logit_bias": {"5": 1}}, 400, "logit_bias", "unsupported_parameter"),
    ("logit_bias over 100", CHAT, {"model": "tiny-llama-hf", "messages": MSG, "logit_bias": {"5": 101}}, 400, "logit_bias", None),
    ("logit_bias not a token id", CHAT, {"model": "tiny-llama-hf", "messages": MSG, "logit_bias": {"fox": 1}}, 400, "logit_bias", None),
    ("logit_bias out of vocab", COMPLETIONS, {"model": "tiny-llama-hf", "prompt": "x", "logit_bias": {"999999": 1}}, 400, "logit_bias", None),
    ("embeddings of chat model", EMBEDDINGS, {"model": "tiny-llama", "input": "x"}, 400, "model", "model_not_supported"),
    ("embeddings empty string", EMBEDDINGS, {"model": "tiny-bert", "input": ""}, 400, "input", None),
    ("embeddings empty list", EMBEDDINGS, {"model": "tiny-bert", "input": []}, 400, "input", None),
    ("embeddings bad encoding", EMBEDDINGS, {"model": "tiny-bert", "input": "x", "encoding_format": "hex"}, 400, "encoding_format", None),
    ("embeddings dimensions 0", EMBEDDINGS, {"model": "tiny-bert", "input": "x", "dimensions": 0}, 400, "dimensions", None),
    ("embeddings dimensions too big", EMBEDDINGS, {"model": "tiny-bert", "input": "x", "dimensions": 4096}, 400, "dimensions", None),
    ("embeddings input too long", EMBEDDINGS, {"model": "tiny-bert", "input": "fox " * 200}, 400, "input", "context_length_exceeded"),
    ("embeddings token out of vocab", EMBEDDINGS, {"model": "tiny-bert", "input": [[5, 100000]]}, 400, "input", None),
]


def assert_openai_error(response: httpx.Response, status: int, param: str | None, code: str | None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else error["type"])
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture(scope="module")
def baseline(server):
    body = {"model": "tiny-llama", "messages": MSG, "max_tokens": 8, "temperature": 0}
    with server.http() as http:
        return http.post(CHAT, json=body).json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_a_clear_4xx(server, case):
    _, path, body, status, param, code = case
    with server.http() as http:
        response = http.post(path, json=body)
    assert_openai_error(response, status, param, code)


def test_invalid_json_is_400(server):
    with server.http() as http:
        for raw in [b"{bad", b"", b"[1, 2]", b'"just a string"', b"\xff\xfe"]:
            response = http.post(CHAT, content=raw, headers={"content-type": "application/json"})
            assert response.status_code == 400, raw
            assert response.json()["error"]["type"] == "invalid_request_error"


def test_body_over_limit_is_413(server):
    big = {"model": "tiny-llama", "messages": [{"role": "user", "content": "x" * (MAX_BODY + 1)}]}
    with server.http() as http:
        response = http.post(CHAT, json=big)
        assert_openai_error(response, 413, None, "request_too_large")

        def chunks():  # no Content-Length: the limit must hold for streamed bodies too
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 8192):
                yield payload[i : i + 8192]

        streamed = http.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
        assert_openai_error(streamed, 413, None, "request_too_large")


def test_unknown_route_and_method(server):
    with server.http() as http:
        assert_openai_error(http.get("/v1/nothing"), 404, None, "not_found")
        assert_openai_error(http.get(CHAT), 405, None, "method_not_allowed")


def test_fields_that_change_nothing_are_accepted(server):
    noop = {"user": "u", "metadata": {"team": "a"}, "store": False, "service_tier": "auto", "prompt_cache_key": "k",
            "safety_identifier": "s", "priority": 0, "request_id": "r", "cache_salt": "c", "modalities": ["text"],
            "parallel_tool_calls": False, "prediction": {"type": "content", "content": "x"}}
    with server.http() as http:
        response = http.post(CHAT, json={"model": "tiny-llama", "messages": MSG, "max_tokens": 2, **noop})
    assert response.status_code == 200, response.text


def test_openai_client_error_types(server):
    client = server.openai()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny-llama", messages=MSG, temperature=-1)
    assert error.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as error:
        client.embeddings.create(model="tiny-llama", input="x")
    assert error.value.body["param"] == "model"


def test_nothing_lost_after_bad_input(server, baseline):
    """After every bad request above, the server answers exactly as before and no sequence
    is stuck in an engine."""
    with server.http() as http:
        for _, path, body, *_ in CASES:
            http.post(path, json=body)
        again = http.post(CHAT, json={"model": "tiny-llama", "messages": MSG, "max_tokens": 8, "temperature": 0})
        status = http.get("/status").json()
    assert again.status_code == 200
    assert again.json()["choices"][0]["message"]["content"] == baseline
    engines = {m["id"]: m["engine"] for m in status["models"]}
    assert engines["tiny-llama"]["running_requests"] == 0
    assert engines["tiny-llama-hf"]["running_requests"] == 0
    assert all(m["status"] == "ready" for m in status["models"])
