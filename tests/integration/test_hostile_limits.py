"""Bounded work per request (issue 27): embeddings, rerank and classify requests over
max_request_tokens (the /gw application keeps the default, 64k) are a 400 naming the field and
the cap, counted exactly by the model's tokenizer, cached inputs included; another key is
served after each."""

from __future__ import annotations

import httpx
import pytest

from contract.ingress_args import IngressArgs
from tests.integration.hostile import assert_others_served, new_key

CAP = IngressArgs().max_request_tokens


@pytest.fixture(scope="module")
def gw(server):
    key, _ = new_key(server)
    with httpx.Client(base_url=server.gateway_url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:
        yield http


def _tokenizer(server, name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(server.models[name]))


def _texts(tag: str, count: int, words: int) -> list[str]:
    return [f"{tag} {i} " + "fox " * words for i in range(count)]


def _assert_over_cap(response: httpx.Response, param: str, tokens: int) -> None:
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "request_tokens_exceeded"
    assert f"{tokens} tokens" in error["message"] and f"at most {CAP} tokens" in error["message"], error["message"]


def test_embeddings_over_the_cap(server, gw):
    texts = _texts("over", 1200, 50)  # about 57 tokens each (tiny-bert takes 64 per input)
    tokens = sum(len(ids) for ids in _tokenizer(server, "bert")(texts)["input_ids"])
    assert tokens > CAP and len(" ".join(texts)) // 4 < CAP  # over by the tokenizer's count, not by chars/4
    _assert_over_cap(gw.post("/v1/embeddings", json={"model": "tiny-bert", "input": texts}), "input", tokens)
    assert_others_served(server)


def test_rerank_over_the_cap(server, gw):
    query, documents = "a fox", [f"document {i} " + "fox " * 130 for i in range(520)]  # each pair truncated to 128
    pairs = _tokenizer(server, "wide_reranker")([query] * len(documents), documents, truncation="only_second",
                                                 max_length=128)["input_ids"]
    tokens = sum(len(ids) for ids in pairs)
    assert tokens > CAP
    response = gw.post("/v1/rerank", json={"model": "wide-reranker", "query": query, "documents": documents})
    _assert_over_cap(response, "documents", tokens)
    assert_others_served(server)


def test_classify_over_the_cap(server, gw):
    texts = _texts("over", 540, 118)  # about 122 tokens each (the classifier reads 128)
    tokens = sum(len(ids) for ids in _tokenizer(server, "classifier")(texts)["input_ids"])
    assert tokens > CAP
    _assert_over_cap(gw.post("/v1/classify", json={"model": "tiny-classifier", "input": texts}), "input", tokens)
    assert_others_served(server)


def test_cached_inputs_count_toward_the_cap(server, gw):
    tokenizer = _tokenizer(server, "bert")
    cached = _texts("cached", 1000, 50)
    new = _texts("new", 100, 50)
    cached_tokens = sum(len(ids) for ids in tokenizer(cached)["input_ids"])
    new_tokens = sum(len(ids) for ids in tokenizer(new)["input_ids"])
    assert cached_tokens <= CAP < cached_tokens + new_tokens
    first = gw.post("/v1/embeddings", json={"model": "tiny-bert", "input": cached})
    assert first.status_code == 200, first.text[:500]
    assert first.json()["usage"]["prompt_tokens"] == cached_tokens
    # Only the new inputs reach the model, which counts the cached ones' tokens too.
    mixed = gw.post("/v1/embeddings", json={"model": "tiny-bert", "input": cached + new})
    _assert_over_cap(mixed, "input", cached_tokens + new_tokens)
    # Every input cached: refused by the ingress on its own count.
    repeated = cached + cached[: len(new)]
    repeated_tokens = cached_tokens + sum(len(ids) for ids in tokenizer(cached[: len(new)])["input_ids"])
    assert repeated_tokens > CAP
    _assert_over_cap(gw.post("/v1/embeddings", json={"model": "tiny-bert", "input": repeated}), "input", repeated_tokens)
    assert gw.post("/v1/embeddings", json={"model": "tiny-bert", "input": new}).status_code == 200  # alone it fits
    assert_others_served(server)
