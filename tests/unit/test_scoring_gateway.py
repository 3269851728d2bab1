"""/v1/rerank and /v1/classify through the real ingress and gateway over fake models and an
in-process state core: keys and model access, the per-item cache, the document limit, token
reservation and settlement, the wrong task for a model. No Ray."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serve_app.state.keys import read_admin_key_file
from tests.unit.fakes import Clock, make_app

QUERY = "where is paris"


# What `serve` runs.
pytestmark = pytest.mark.models({"rerank-model": "rerank", "classify-model": "text-classification",
                                 "embed-model": "embedding"})


@pytest.fixture
def gw(serve, tmp_path):
    app, gateway, core = make_app(tmp_path, serve, key_cache_ttl_s=0.001, state_clock=Clock(1000.0))
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"}
        yield client, gateway, core, admin


def new_key(client, admin, **fields) -> dict[str, str]:
    """The headers that present a new key, which also carry its id (for the admin API)."""
    response = client.post("/admin/keys", json={"name": "tester", **fields}, headers=admin)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['key']}", "x-test-key-id": response.json()["id"]}


def test_rerank_ranks_and_caches_each_document(gw, serve):
    client, gateway, _, admin = gw
    model = serve.models["rerank-model"]
    key = new_key(client, admin)
    body = {"model": "rerank-model", "query": QUERY, "documents": ["a", "ccc", "bb"]}
    first = client.post("/v1/rerank", json=body, headers=key)
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    answer = first.json()
    assert [(r["index"], r["relevance_score"]) for r in answer["results"]] == [(1, 0.03), (2, 0.02), (0, 0.01)]
    assert all("document" not in r for r in answer["results"])  # only with return_documents
    assert answer["usage"] == {"prompt_tokens": 3 * 7, "total_tokens": 3 * 7}  # the fake: 3 query words, 1, +3
    assert answer["id"].startswith("rerank-") and answer["model"] == "rerank-model"
    client.portal.call(gateway.cache.flush)
    # One new document: only it reaches the model; top_n and documents are applied to the cached scores too.
    second = client.post("/rerank", json={**body, "documents": ["bb", "dddd", "a"], "top_n": 2, "return_documents": True},
                         headers=key)
    assert model.reranked == ["a", "ccc", "bb", "dddd"]
    assert second.headers["x-cache"] == "MISS"
    assert second.json()["results"] == [{"index": 1, "relevance_score": 0.04, "document": {"text": "dddd"}},
                                        {"index": 0, "relevance_score": 0.02, "document": {"text": "bb"}}]
    assert second.json()["usage"]["total_tokens"] == 3 * 7  # every document counts, cached or not
    client.portal.call(gateway.cache.flush)
    third = client.post("/v1/rerank", json={**body, "top_n": 1}, headers=key)
    assert third.headers["x-cache"] == "HIT" and third.json()["results"] == [{"index": 1, "relevance_score": 0.03}]
    assert len(model.reranked) == 4
    other_query = client.post("/v1/rerank", json={**body, "query": "another"}, headers=key)
    assert other_query.headers["x-cache"] == "MISS"  # a score belongs to its query and document


def test_classify_answers_every_label_and_caches_each_input(gw, serve):
    client, gateway, _, admin = gw
    model = serve.models["classify-model"]
    key = new_key(client, admin)
    first = client.post("/v1/classify", json={"model": "classify-model", "input": "abc"}, headers=key)
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    answer = first.json()
    assert answer["object"] == "list" and answer["id"].startswith("classify-") and answer["model"] == "classify-model"
    assert answer["data"] == [{"index": 0, "label": "long", "probs": [0.25, 0.75], "num_classes": 2,
                               "scores": [{"label": "long", "score": 0.75}, {"label": "short", "score": 0.25}]}]
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
    client.portal.call(gateway.cache.flush)
    second = client.post("/v1/classify", json={"model": "classify-model", "input": ["abc", "x y"]}, headers=key)
    assert model.classified == ["abc", "x y"]
    assert [d["index"] for d in second.json()["data"]] == [0, 1]
    assert second.json()["data"][0] == {**answer["data"][0], "index": 0}
    assert second.json()["usage"]["prompt_tokens"] == 3 + 4


def test_too_many_documents_is_a_400_before_the_cache_or_the_model(gw, serve):
    client, *_, admin = gw
    key = new_key(client, admin)
    response = client.post("/v1/rerank", json={"model": "rerank-model", "query": QUERY, "documents": list("abcde")},
                           headers=key)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "documents" and error["type"] == "invalid_request_error"
    assert "at most 4" in error["message"] and "5 items" in error["message"]
    assert serve.models["rerank-model"].calls == 0


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/rerank", {"model": "embed-model", "query": QUERY, "documents": ["a"]}),
    ("/v1/classify", {"model": "rerank-model", "input": "a"}),
    ("/v1/embeddings", {"model": "classify-model", "input": "a"}),
])
def test_a_model_of_another_task_is_a_400_without_a_model_call(gw, serve, path, body):
    client, *_, admin = gw
    response = client.post(path, json=body, headers=admin)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_supported" and response.json()["error"]["param"] == "model"
    assert all(model.calls == 0 for model in serve.models.values())


def test_keys_limit_models_and_tokens(gw, serve):
    client, gateway, _, admin = gw
    only_classify = new_key(client, admin, models=["classify-model"])
    denied = client.post("/v1/rerank", json={"model": "rerank-model", "query": QUERY, "documents": ["a"]},
                         headers=only_classify)
    assert denied.status_code == 404 and denied.json()["error"]["code"] == "model_not_found"
    small = new_key(client, admin, tpm=50)
    too_large = client.post("/v1/rerank", json={"model": "rerank-model", "query": "q" * 400, "documents": ["a"]},
                            headers=small)
    assert too_large.status_code == 400
    assert too_large.json()["error"]["code"] == "request_too_large" and too_large.json()["error"]["param"] == "documents"
    ok = client.post("/v1/rerank", json={"model": "rerank-model", "query": QUERY, "documents": ["a", "bb"]}, headers=small)
    assert ok.status_code == 200 and int(ok.headers["x-ratelimit-remaining-tokens"]) < 50
    assert serve.models["rerank-model"].calls == 1
    client.portal.call(gateway.usage.flush)
    usage = client.get(f"/admin/keys/{small['x-test-key-id']}", headers=admin).json()["usage"]
    assert usage["requests"] == 1 and usage["prompt_tokens"] == ok.json()["usage"]["total_tokens"] == 14


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/rerank", {"model": "rerank-model", "query": QUERY, "documents": []}, "documents"),
    ("/v1/rerank", {"model": "rerank-model", "query": QUERY, "documents": ["a", ""]}, "documents[1]"),
    ("/v1/rerank", {"model": "rerank-model", "query": "", "documents": ["a"]}, "query"),
    ("/v1/rerank", {"model": "rerank-model", "documents": ["a"]}, "query"),
    ("/v1/rerank", {"model": "rerank-model", "query": QUERY, "documents": "a"}, "documents"),
    ("/v1/rerank", {"model": "rerank-model", "query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
    ("/v1/rerank", {"model": "rerank-model", "query": QUERY, "documents": ["a"], "top_n": "1"}, "top_n"),
    ("/v1/classify", {"model": "classify-model", "input": []}, "input"),
    ("/v1/classify", {"model": "classify-model", "input": ""}, "input"),
    ("/v1/classify", {"model": "classify-model", "input": [1, 2]}, "input"),
])
def test_bad_bodies_are_400s_naming_the_param(gw, serve, path, body, param):
    client, *_, admin = gw
    response = client.post(path, json=body, headers=admin)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and response.json()["error"]["type"] == "invalid_request_error"
    assert all(model.calls == 0 for model in serve.models.values())
