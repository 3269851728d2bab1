"""Shared checks of the hostile-input tier (tests/integration/test_hostile_*.py): after each
attack, another key's chat and embeddings still answer, and answer correctly."""

from __future__ import annotations

import math

import httpx

from tests.integration.test_gateway import MSG
from tests.integration.test_gateway import admin as admin_headers
from tests.integration.test_gateway import create_key as new_key

__all__ = ["admin_headers", "assert_others_served", "new_key"]


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
