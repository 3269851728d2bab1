"""/v1/rerank (and /rerank) and /v1/classify on real Ray Serve, over tiny sequence classifiers
exported to OpenVINO: scores against transformers' own text-classification pipeline, the wire
shape, every bad input as a clear 400 (and the model serving on afterwards), and through the
/gw gateway: keys, per-key model access, token rate limits and the per-item cache."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.conftest import CLASSIFIER_LABELS, RERANK_MAX_DOCUMENTS
from tests.integration.test_gateway import create_key

RERANKER, CLASSIFIER = "tiny-reranker", "tiny-classifier"
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "The capital of France is Paris.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Ray Serve runs models as deployments; each deployment has replicas.",
    "OpenVINO runs neural networks fast on Intel and AMD processors.",
    "Embeddings map sentences to vectors.",
]
TOLERANCE = 1e-4


def _pipeline(path):
    from transformers import pipeline

    return pipeline("text-classification", model=str(path), top_k=None)


@pytest.fixture(scope="module")
def expected_relevance(server) -> list[float]:
    scorer = _pipeline(server.models["reranker"])
    return [scorer({"text": QUERY, "text_pair": document})[0]["score"] for document in DOCUMENTS]


@pytest.fixture(scope="module")
def expected_labels(server) -> list[list[dict]]:
    return _pipeline(server.models["classifier"])(DOCUMENTS)


def _tokens(server, key: str, *texts, pair: bool = False) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(server.models[key]))
    if pair:
        return [len(ids) for ids in tokenizer([QUERY] * len(texts), list(texts))["input_ids"]]
    return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_rerank_scores_match_the_pipeline(server, expected_relevance, path):
    with server.http() as http:
        response = http.post(path, json={"model": RERANKER, "query": QUERY, "documents": DOCUMENTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "model", "results", "usage"} and body["id"].startswith("rerank-") and body["model"] == RERANKER
    ranked = sorted(range(len(DOCUMENTS)), key=lambda i: -expected_relevance[i])
    assert [result["index"] for result in body["results"]] == ranked
    worst = max(abs(result["relevance_score"] - expected_relevance[result["index"]]) for result in body["results"])
    print(f"rerank: largest difference from the pipeline {worst:.2e}")
    assert worst < TOLERANCE, worst
    assert all(set(result) == {"index", "relevance_score"} for result in body["results"])
    tokens = sum(_tokens(server, "reranker", *DOCUMENTS, pair=True))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_rerank_top_n_and_documents(server, expected_relevance):
    with server.http() as http:
        top = http.post("/v1/rerank", json={"model": RERANKER, "query": QUERY, "documents": DOCUMENTS, "top_n": 2,
                                            "return_documents": True}).json()
        every = http.post("/v1/rerank", json={"model": RERANKER, "query": QUERY, "documents": DOCUMENTS[:2],
                                              "top_n": 50}).json()
    ranked = sorted(range(len(DOCUMENTS)), key=lambda i: -expected_relevance[i])[:2]
    assert [(r["index"], r["document"]) for r in top["results"]] == [(i, {"text": DOCUMENTS[i]}) for i in ranked]
    assert sorted(r["index"] for r in every["results"]) == [0, 1]  # top_n past the documents: all of them


def test_classify_gives_every_label_its_pipeline_score(server, expected_labels):
    with server.http() as http:
        response = http.post("/v1/classify", json={"model": CLASSIFIER, "input": DOCUMENTS})
        single = http.post("/v1/classify", json={"model": CLASSIFIER, "input": DOCUMENTS[0]}).json()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == CLASSIFIER and body["id"].startswith("classify-")
    assert abs(body["created"] - time.time()) < 600
    worst = 0.0
    for index, (data, want) in enumerate(zip(body["data"], expected_labels, strict=True)):
        assert data["index"] == index and data["num_classes"] == len(CLASSIFIER_LABELS)
        assert [s["label"] for s in data["scores"]] == [w["label"] for w in want]  # highest first, as the pipeline
        worst = max(worst, *(abs(s["score"] - w["score"]) for s, w in zip(data["scores"], want, strict=True)))
        assert data["label"] == want[0]["label"]
        by_label = {w["label"]: w["score"] for w in want}
        assert data["probs"] == pytest.approx([by_label[label] for label in CLASSIFIER_LABELS], abs=TOLERANCE)
    print(f"classify: largest difference from the pipeline {worst:.2e}")
    assert worst < TOLERANCE, worst
    tokens = sum(_tokens(server, "classifier", *DOCUMENTS))
    assert body["usage"] == {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
    assert len(single["data"]) == 1 and single["data"][0]["label"] == body["data"][0]["label"]
    assert single["data"][0]["probs"] == pytest.approx(body["data"][0]["probs"], abs=TOLERANCE)  # padded alike or not


# ----------------------------------------------------------------------------- bad input

TOO_LONG = "fox " * 200  # past the tiny models' 128 tokens
BAD = [
    # (id, path, body, param, code, words in the message)
    ("empty documents", "/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": []}, "documents", "invalid_value",
     "at least 1"),
    ("an empty document", "/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": ["a", ""]}, "documents[1]",
     "invalid_value", "at least 1"),
    ("too many documents", "/v1/rerank",
     {"model": RERANKER, "query": QUERY, "documents": [f"doc {i}" for i in range(RERANK_MAX_DOCUMENTS + 1)]},
     "documents", None, f"at most {RERANK_MAX_DOCUMENTS}"),
    ("query longer than the context", "/v1/rerank", {"model": RERANKER, "query": TOO_LONG, "documents": ["a"]}, "query",
     "context_length_exceeded", "query has"),
    ("empty query", "/rerank", {"model": RERANKER, "query": "", "documents": ["a"]}, "query", "invalid_value", "at least 1"),
    ("top_n 0", "/v1/rerank", {"model": RERANKER, "query": QUERY, "documents": ["a"], "top_n": 0}, "top_n",
     "invalid_value", "greater than or equal to 1"),
    ("rerank on an embedding model", "/v1/rerank", {"model": "tiny-bert", "query": QUERY, "documents": ["a"]}, "model",
     "model_not_supported", "embedding model"),
    ("rerank on a classifier", "/v1/rerank", {"model": CLASSIFIER, "query": QUERY, "documents": ["a"]}, "model",
     "model_not_supported", "text-classification model"),
    ("classify on a reranker", "/v1/classify", {"model": RERANKER, "input": "a"}, "model", "model_not_supported",
     "rerank model"),
    ("embeddings on a classifier", "/v1/embeddings", {"model": CLASSIFIER, "input": "a"}, "model",
     "model_not_supported", "does not support"),
    ("classify input longer than the context", "/v1/classify", {"model": CLASSIFIER, "input": ["fine", TOO_LONG]}, "input",
     "context_length_exceeded", "input[1]"),
    ("classify empty input", "/v1/classify", {"model": CLASSIFIER, "input": []}, "input", "invalid_value", "at least 1"),
]


@pytest.mark.parametrize(("path", "body", "param", "code", "words"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_input_is_a_clear_400_and_the_model_serves_on(server, expected_relevance, path, body, param, code, words):
    with server.http() as http:
        response = http.post(path, json=body)
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error"}
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["param"] == param and error["code"] == code and words in error["message"], error
        after = http.post("/v1/rerank", json={"model": RERANKER, "query": QUERY, "documents": DOCUMENTS[:1]})
        classified = http.post("/v1/classify", json={"model": CLASSIFIER, "input": "still here"})
    assert after.status_code == 200 and classified.status_code == 200
    assert after.json()["results"][0]["relevance_score"] == pytest.approx(expected_relevance[0], abs=TOLERANCE)


# ----------------------------------------------------------------------------- through the gateway


def _gw(server, key: str) -> httpx.Client:
    """A client of the /gw application (keys, limits, cache) presenting `key`."""
    return httpx.Client(base_url=server.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key}"})


def _until_hit(http: httpx.Client, path: str, body: dict, sent: list, timeout_s: float = 5.0) -> httpx.Response:
    """Stored entries reach the state actor and the other ingress replica within a sync period.
    Every response is appended to `sent` (each one is charged to the key)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = http.post(path, json=body)
        sent.append(response)
        if response.headers.get("x-cache") == "HIT" or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def _usage(server, key_id: str, requests: int, timeout_s: float = 10.0) -> dict:
    """The key's usage once `requests` requests are recorded (replicas flush it every second)."""
    admin = {"Authorization": f"Bearer {server.admin_key()}"}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.gateway_url, timeout=30, headers=admin) as http:
        while True:
            usage = http.get(f"/admin/keys/{key_id}").json()["usage"]
            if usage["requests"] >= requests or time.monotonic() > deadline:
                return usage
            time.sleep(0.2)


def test_gateway_keys_model_access_cache_and_token_usage(server, expected_relevance, expected_labels):
    key, key_id = create_key(server, models=[RERANKER, CLASSIFIER], rpm=1000, tpm=100_000)
    rerank = {"model": RERANKER, "query": QUERY, "documents": DOCUMENTS, "top_n": 3}
    sent: list[httpx.Response] = []
    with _gw(server, key) as http:
        assert httpx.post(f"{server.gateway_url}/v1/rerank", json=rerank, timeout=30).status_code == 401  # no key
        first = http.post("/v1/rerank", json=rerank)
        sent.append(first)
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100_000
        hit = _until_hit(http, "/rerank", rerank, sent)
        assert hit.headers["x-cache"] == "HIT" and hit.json()["results"] == first.json()["results"]
        # A cached score serves any top_n; the one new document is computed.
        more = http.post("/v1/rerank", json={**rerank, "documents": [*DOCUMENTS, "Paris is in France."], "top_n": None})
        sent.append(more)
        assert more.status_code == 200 and more.headers["x-cache"] == "MISS" and len(more.json()["results"]) == 6
        scores = {r["index"]: r["relevance_score"] for r in more.json()["results"]}
        assert max(abs(scores[i] - expected_relevance[i]) for i in range(len(DOCUMENTS))) < TOLERANCE

        classify = {"model": CLASSIFIER, "input": DOCUMENTS[:3]}
        labelled = http.post("/v1/classify", json=classify)
        sent.append(labelled)
        assert labelled.status_code == 200 and labelled.headers["x-cache"] == "MISS"
        again = _until_hit(http, "/v1/classify", classify, sent)
        assert again.headers["x-cache"] == "HIT" and again.json()["data"] == labelled.json()["data"]
        assert [d["scores"][0]["label"] for d in again.json()["data"]] == [w[0]["label"] for w in expected_labels[:3]]
        not_cached = http.post("/v1/classify", json=classify, headers={"Cache-Control": "no-cache"})
        sent.append(not_cached)
        assert not_cached.headers["x-cache"] == "MISS"

        denied = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "x"})
        assert denied.status_code == 404 and denied.json()["error"]["code"] == "model_not_found"

    assert all(response.status_code == 200 for response in sent)
    usage = _usage(server, key_id, len(sent))
    assert usage["requests"] == len(sent)
    assert usage["prompt_tokens"] == sum(r.json()["usage"]["total_tokens"] for r in sent)
    assert usage["completion_tokens"] == 0


def test_gateway_token_limits_count_scored_tokens(server):
    key, _ = create_key(server, models=[RERANKER], tpm=300)
    with _gw(server, key) as http:
        too_large = http.post("/v1/rerank", json={"model": RERANKER, "query": "Paris " * 300, "documents": ["a"]})
        assert too_large.status_code == 400
        assert too_large.json()["error"]["code"] == "request_too_large" and too_large.json()["error"]["param"] == "documents"
        spent, statuses = 0, []
        for _ in range(20):  # every request is computed (no-cache) and charged its real tokens
            response = http.post("/v1/rerank", json={"model": RERANKER, "query": QUERY, "documents": DOCUMENTS},
                                 headers={"Cache-Control": "no-cache"})
            statuses.append(response.status_code)
            if response.status_code != 200:
                break
            spent += response.json()["usage"]["total_tokens"]
    assert statuses[-1] == 429, statuses
    limited = response.json()["error"]
    assert limited["code"] == "rate_limit_exceeded" and limited["type"] == "tokens"
    assert int(response.headers["retry-after"]) >= 1
    # Each request reserves an estimate and is settled to its real tokens: the limit is met
    # within about one request's worth of tokens.
    per_request = sum(_tokens(server, "reranker", *DOCUMENTS, pair=True))
    assert 300 - 2 * per_request <= spent <= 300 + per_request, (spent, per_request, statuses)
