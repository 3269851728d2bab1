"""Shared checks of the hostile-input tier (tests/integration/test_hostile_*.py): after each
attack, another key's chat and embeddings still answer, and answer correctly."""

from __future__ import annotations

import math

import httpx

MSG = [{"role": "user", "content": "Tell me about Paris."}]


def admin_headers(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_key()}"}


def new_key(server, **fields) -> tuple[str, str]:
    """A fresh non-admin key on the /gw application: (secret, id)."""
    with httpx.Client(base_url=server.gateway_url, timeout=30) as http:
        response = http.post("/admin/keys", json={"name": "hostile", **fields}, headers=admin_headers(server))
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def assert_others_served(server, key: str | None = None) -> None:
    """Chat and embeddings answer 200 with a well-formed body for a key that did nothing wrong."""
    key = key or new_key(server)[0]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.gateway_url, timeout=60, headers=headers) as http:
        chat = http.post("/v1/chat/completions",
                         json={"model": "tiny-llama", "messages": MSG, "max_tokens": 4, "temperature": 0})
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert 1 <= body["usage"]["completion_tokens"] <= 4
        embedded = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": ["one", "two"]})
        assert embedded.status_code == 200, embedded.text
        data = embedded.json()["data"]
        assert [item["index"] for item in data] == [0, 1]
        for item in data:  # sentence-transformers layout: normalized vectors
            assert math.isclose(math.sqrt(sum(x * x for x in item["embedding"])), 1.0, rel_tol=1e-3)
