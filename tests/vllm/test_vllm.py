"""The vLLM engine as a user meets it: through the gateway with the official openai client, and
through a typed DeploymentHandle."""

from __future__ import annotations

import json

import httpx
import numpy as np
import openai
import pytest
from ray import serve

from contract.protocol import ChatCompletionRequest, ChatCompletionResponse
from tests.integration.test_stream_lifecycle import wait_for

from .conftest import EMBED_MODEL, EMBED_SOURCE, MODEL

MSG = [{"role": "user", "content": "Name three colours."}]
LONG = 1500


def create_key(server, **fields) -> str:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        response = http.post("/admin/keys", json={"name": "vllm", **fields},
                             headers={"Authorization": f"Bearer {server.admin_key()}"})
    assert response.status_code == 201, response.text
    return response.json()["key"]


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def engine_stats() -> dict:
    return serve.get_app_handle(MODEL).stats.remote().result(timeout_s=10).model_dump()


def test_v1_models_says_the_model_runs_on_vllm(server):
    models = client(server, create_key(server)).models.list()
    (card,) = [m for m in models.data if m.id == MODEL]
    assert (card.backend, card.device, card.platform) == ("vllm", "cpu", "cpu")


def test_chat_streamed_and_whole_agree_and_count_their_tokens(server):
    whole = client(server, create_key(server)).chat.completions.create(model=MODEL, messages=MSG, max_tokens=24,
                                                                        temperature=0)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert 0 < whole.usage.completion_tokens <= 24
    # Another key: its own cache scope, so the stream is generated, not replayed.
    chunks = list(client(server, create_key(server)).chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_sampling_extras_reach_vllm(server):
    api = client(server, create_key(server))
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"],
              "additionalProperties": False}
    shaped = api.chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=40, temperature=0, logprobs=True, top_logprobs=2,
        response_format={"type": "json_schema", "json_schema": {"name": "colour", "schema": schema}})
    assert shaped.choices[0].finish_reason == "stop", shaped.choices[0].message.content
    assert json.loads(shaped.choices[0].message.content)["colour"] in ("red", "green", "blue")
    entries = shaped.choices[0].logprobs.content
    assert len(entries) == shaped.usage.completion_tokens
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)
    # A seed repeats a sampled answer (two keys: the cache keeps them apart); a bias forces its token.
    seeded = [client(server, create_key(server)).completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=7) for _ in range(2)]
    assert seeded[0].choices[0].text == seeded[1].choices[0].text
    biased = api.chat.completions.create(model=MODEL, messages=MSG, max_tokens=3, temperature=0, logprobs=True,
                                         logit_bias={"1000": 100})
    assert len({entry.token for entry in biased.choices[0].logprobs.content}) == 1
    assert biased.usage.completion_tokens == 3


def test_bad_requests_are_refused_before_the_engine(server):
    api = client(server, create_key(server))
    before = engine_stats()
    with pytest.raises(openai.BadRequestError) as too_many:
        api.chat.completions.create(model=MODEL, messages=MSG, max_tokens=4, logprobs=True, top_logprobs=21)
    assert "top_logprobs" in too_many.value.body["message"]
    with pytest.raises(openai.BadRequestError) as too_long:
        api.completions.create(model=MODEL, prompt="word " * 3000, max_tokens=4)
    assert too_long.value.body["code"] == "context_length_exceeded"
    after = engine_stats()
    assert after["finished_requests_total"] + after["cancelled_requests_total"] == (
        before["finished_requests_total"] + before["cancelled_requests_total"])


def test_a_closed_stream_is_aborted_in_vllm(server):
    key = create_key(server)
    before = engine_stats()
    body = {"model": MODEL, "messages": MSG, "max_tokens": LONG, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.base_url, timeout=60) as http, http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)  # the stream has begun in the engine; now the client leaves
    after = wait_for(lambda: (s := engine_stats())["running_requests"] == 0
                     and s["cancelled_requests_total"] > before["cancelled_requests_total"] and s, timeout_s=30)
    assert after["cancelled_requests_total"] == before["cancelled_requests_total"] + 1
    assert after["finished_requests_total"] == before["finished_requests_total"]
    assert after["generated_tokens_total"] - before["generated_tokens_total"] < LONG


def test_the_gateway_caches_and_limits_vllm_answers(server):
    key = create_key(server, rpm=3)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": MSG, "max_tokens": 8, "temperature": 0}
    with httpx.Client(base_url=server.base_url, timeout=120, headers=headers) as http:
        first = http.post("/v1/chat/completions", json=body)
        finished = engine_stats()["finished_requests_total"]
        again = http.post("/v1/chat/completions", json=body)
        assert (first.status_code, again.status_code) == (200, 200)
        assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
        assert again.json()["choices"] == first.json()["choices"]
        assert engine_stats()["finished_requests_total"] == finished  # the hit never reached vLLM
        assert http.post("/v1/chat/completions", json={**body, "max_tokens": 9}).status_code == 200
        limited = http.post("/v1/chat/completions", json=body)
    assert limited.status_code == 429, limited.text
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1


def test_a_typed_handle_call_runs_on_vllm(server):
    request = ChatCompletionRequest(model=MODEL, messages=MSG, max_tokens=6, temperature=0)
    response = serve.get_app_handle(MODEL).chat.remote(request).result(timeout_s=120)
    assert isinstance(response, ChatCompletionResponse)
    assert response.choices[0].message.content and 0 < response.usage.completion_tokens <= 6


def test_embeddings_on_vllm_match_sentence_transformers(server):
    from sentence_transformers import SentenceTransformer

    from deployments.sources import parse_source

    texts = ["The cat sat on the mat.", "A completely different sentence about databases.", "x"]
    answer = client(server, create_key(server)).embeddings.create(model=EMBED_MODEL, input=texts)
    assert answer.model == EMBED_MODEL and answer.usage.prompt_tokens > 0
    got = np.array([item.embedding for item in sorted(answer.data, key=lambda item: item.index)])
    expected = SentenceTransformer(parse_source(EMBED_SOURCE).location, device="cpu").encode(texts)
    cosines = (got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert got.shape == expected.shape and cosines.min() > 0.99, cosines
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)  # the model's Normalize module
    models = {m.id: m for m in client(server, create_key(server)).models.list().data}
    assert models[EMBED_MODEL].backend == "vllm"
