"""The cap on tokens per embeddings, rerank and classify request (IngressArgs.max_request_tokens,
issue 27): the replica counts with the model's tokenizer, exactly, and refuses with a 400 naming
the field and the cap; the gateway sends its cached items' tokens along, so the cap covers the
whole request, and refuses cached items over it without calling the model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from contract.config import ModelAppArgs
from contract.embedding_protocol import EmbeddingRequest
from contract.errors import APIError
from contract.model_api import with_token_budget
from contract.scoring_protocol import ClassificationRequest, RerankRequest
from deployments.sources import PreparedModel
from deployments.tasks import embedding, rerank, text_classification
from serve_app.state.keys import read_admin_key_file
from tests.tiny_models import build_tiny_bert, build_tiny_bert_classifier
from tests.unit.fakes import make_app

TORCH = SimpleNamespace(backend="transformers", device="cpu", dtype="float32")
TEXTS = ["the capital of france is paris", "a fox jumps over the dog", "paris"]
QUERY = "where is paris"

# ----------------------------------------------------------------------------- the replica


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("cap-models")
    paths = {"embedding": build_tiny_bert(root / "bert"), "rerank": build_tiny_bert_classifier(root / "reranker"),
             "text-classification": build_tiny_bert_classifier(root / "classifier", labels=["a", "b"], seed=1)}
    modules = {"embedding": embedding, "rerank": rerank, "text-classification": text_classification}
    return {name: modules[name].load("m", ModelAppArgs(source=str(path), task=name, backend="transformers"),
                                     PreparedModel(hf_dir=path), TORCH) for name, path in paths.items()}


def _exact(tasks, name: str) -> int:
    """What the model's own tokenizer counts for the request below."""
    tokenizer = tasks[name].tokenizer
    ids = tokenizer([QUERY] * len(TEXTS), TEXTS)["input_ids"] if name == "rerank" else tokenizer(TEXTS)["input_ids"]
    return sum(len(row) for row in ids)


def _call(tasks, name: str, max_tokens: int | None, counted: int = 0):
    task = tasks[name]
    request, method = {
        "embedding": (EmbeddingRequest(model="m", input=TEXTS), "embed"),
        "rerank": (RerankRequest(model="m", query=QUERY, documents=TEXTS), "rerank"),
        "text-classification": (ClassificationRequest(model="m", input=TEXTS), "classify"),
    }[name]
    if max_tokens is not None:
        with_token_budget(request, max_tokens, counted)
    return asyncio.run(getattr(task, method)(request))


@pytest.mark.parametrize("name,param", [("embedding", "input"), ("rerank", "documents"), ("text-classification", "input")])
def test_the_replica_caps_the_tokenizers_exact_count(tasks, name, param):
    exact = _exact(tasks, name)
    assert exact > 3 * len(TEXTS)  # the texts are real token sequences, not one token each
    assert _call(tasks, name, exact).usage.total_tokens == exact  # at the cap: served
    assert _call(tasks, name, None).usage.total_tokens == exact  # a handle caller without a budget: served
    for max_tokens, counted in ((exact - 1, 0), (exact + 9, 10)):  # one over, alone or with the cached ones
        with pytest.raises(APIError) as error:
            _call(tasks, name, max_tokens, counted)
        assert error.value.status_code == 400 and error.value.param == param
        assert error.value.code == "request_tokens_exceeded"
        assert f"{exact + counted} tokens" in error.value.message and f"at most {max_tokens} tokens" in error.value.message


# ----------------------------------------------------------------------------- the gateway


# The gateway's tests below: what `serve` runs.
pytestmark = pytest.mark.models({"embed-model": "embedding", "rerank-model": "rerank",
                                 "classify-model": "text-classification"})


CAP = 40


@pytest.fixture
def gw(serve, tmp_path: Path):
    app, gateway, _ = make_app(tmp_path, serve, max_request_tokens=CAP)
    with TestClient(app) as client:
        key = client.post("/admin/keys", json={"name": "t"}, headers={"Authorization": f"Bearer {read_admin_key_file(tmp_path)}"})
        yield client, gateway, {"Authorization": f"Bearer {key.json()['key']}"}


def _words(n: int, seed: int) -> str:
    return " ".join(f"w{seed}x{i}" for i in range(n))


# The fakes count: an embedding or classification input its words + 2, a rerank pair the query's
# words + the document's + 3 (QUERY: 3 words, so a document of n words costs n + 6).
CASES = {
    "embeddings": ("/v1/embeddings", "embed-model", "input", lambda docs: {"input": docs}, 2),
    "rerank": ("/v1/rerank", "rerank-model", "documents", lambda docs: {"query": QUERY, "documents": docs}, 6),
    "classify": ("/v1/classify", "classify-model", "input", lambda docs: {"input": docs}, 2),
}


@pytest.mark.parametrize("case", CASES)
def test_the_cap_covers_the_whole_request_cached_items_included(gw, serve, case):
    client, gateway, key = gw
    path, model, param, body, extra = CASES[case]
    fake = serve.models[model]

    def post(docs):
        return client.post(path, json={"model": model, **body(docs)}, headers=key)

    cached = [_words(12 - extra, seed) for seed in range(3)]  # 12 tokens each: 36, under the cap
    assert post(cached).status_code == 200
    client.portal.call(gateway.cache.flush)
    calls = fake.calls
    # The new item alone is under the cap; with the cached ones the request is over it. The
    # model gets only the new item, and refuses it for the whole request's count.
    new = _words(12 - extra, 99)
    over = post([*cached, new])
    assert over.status_code == 400, over.text
    error = over.json()["error"]
    assert error["param"] == param and error["code"] == "request_tokens_exceeded"
    assert "48 tokens" in error["message"] and f"at most {CAP} tokens" in error["message"]
    assert fake.calls == calls + 1
    # Cached items alone over the cap: refused here, the model not called.
    repeated = post(cached + cached[:1])
    assert repeated.status_code == 400 and repeated.json()["error"]["param"] == param
    assert "48 tokens" in repeated.json()["error"]["message"]
    assert fake.calls == calls + 1
    assert post([new]).status_code == 200  # alone it fits


def test_a_client_cannot_set_the_budget():
    request = EmbeddingRequest.model_validate({"model": "m", "input": "a", "_token_budget": {"max_tokens": 10**9}})
    assert request._token_budget is None
