"""Requests at exactly the documented maxima are served, on the OpenVINO and the transformers
engines alike, through the ingress -> model gRPC path: 2048 embeddings of 384 floats (and a
64-label classification of 2048 inputs) are answers over gRPC's 4 MiB default, which used to
be a 500 and, repeated by one key, opened the model's breaker for everyone."""

from __future__ import annotations

import json

import httpx
import pytest

from contract.embedding_protocol import MAX_EMBEDDING_INPUTS
from contract.ingress_args import IngressArgs
from contract.scoring_protocol import MAX_CLASSIFY_INPUTS
from tests.integration.conftest import WIDE_LABELS
from tests.integration.hostile import admin_headers, assert_others_served, new_key

ENGINES = ["", "-torch"]  # openvino, transformers
WIDTH = 384
MAX_BODY = IngressArgs().max_request_body_bytes  # the /gw application keeps the default


def _inputs(count: int) -> list[str]:
    return [f"the quick brown fox {i}" for i in range(count)]


@pytest.fixture(scope="module")
def gw(server):
    key, _ = new_key(server)
    with httpx.Client(base_url=server.gateway_url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:
        yield http


def _breaker(server, model: str) -> str:
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        status = http.get("/status", headers=admin_headers(server)).json()
    return next(m["status"] for m in status["models"] if m["id"] == model)


@pytest.mark.parametrize("engine", ENGINES, ids=["openvino", "transformers"])
def test_embeddings_at_the_most_inputs_repeated_leave_the_model_serving(server, gw, engine):
    model = f"wide-bert{engine}"
    for _ in range(4):  # the attack: four of them opened the breaker
        response = gw.post("/v1/embeddings", json={"model": model, "input": _inputs(MAX_EMBEDDING_INPUTS)})
        assert response.status_code == 200, response.text[:500]
        data = response.json()["data"]
        assert [item["index"] for item in data] == list(range(MAX_EMBEDDING_INPUTS))
        assert {len(item["embedding"]) for item in data} == {WIDTH}
    over = gw.post("/v1/embeddings", json={"model": model, "input": _inputs(MAX_EMBEDDING_INPUTS + 1)})
    assert over.status_code == 400 and over.json()["error"]["param"] == "input"
    assert _breaker(server, model) == "ready"
    assert_others_served(server)


@pytest.mark.parametrize("engine", ENGINES, ids=["openvino", "transformers"])
def test_classification_of_the_most_inputs_with_many_labels(server, gw, engine):
    response = gw.post("/v1/classify", json={"model": f"wide-classifier{engine}", "input": _inputs(MAX_CLASSIFY_INPUTS)})
    assert response.status_code == 200, response.text[:500]
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(MAX_CLASSIFY_INPUTS))
    assert all(item["num_classes"] == len(WIDE_LABELS) and len(item["scores"]) == len(WIDE_LABELS) for item in data)
    assert_others_served(server)


@pytest.mark.parametrize("engine", ENGINES, ids=["openvino", "transformers"])
def test_rerank_of_the_most_documents_with_the_documents_returned(server, gw, engine):
    model = f"wide-reranker{engine}"
    most = server.plan.models[model].max_rerank_documents
    documents = [f"document {i} about a fox" for i in range(most)]  # within max_request_tokens too
    response = gw.post("/v1/rerank", json={"model": model, "query": "a fox", "documents": documents, "return_documents": True})
    assert response.status_code == 200, response.text[:500]
    results = response.json()["results"]
    assert sorted(result["index"] for result in results) == list(range(most))
    assert all(result["document"]["text"] == documents[result["index"]] for result in results)
    over = gw.post("/v1/rerank", json={"model": model, "query": "a fox", "documents": [*documents, "one more"]})
    assert over.status_code == 400 and over.json()["error"]["param"] == "documents"
    assert_others_served(server)


@pytest.mark.parametrize("engine", ENGINES, ids=["openvino", "transformers"])
def test_a_body_of_exactly_the_most_bytes_is_served_and_one_more_is_413(server, gw, engine):
    body = json.dumps({"model": f"wide-bert{engine}", "input": _inputs(MAX_EMBEDDING_INPUTS)})
    padded = body[:-1] + " " * (MAX_BODY - len(body)) + "}"  # JSON whitespace: the same request
    assert len(padded.encode()) == MAX_BODY
    headers = {"Content-Type": "application/json"}
    response = gw.post("/v1/embeddings", content=padded.encode(), headers=headers)
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["data"]) == MAX_EMBEDDING_INPUTS
    too_big = gw.post("/v1/embeddings", content=(padded[:-1] + " }").encode(), headers=headers)
    assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "invalid_request_error"
    assert_others_served(server)
