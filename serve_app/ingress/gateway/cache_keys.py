"""The response cache's keys. Only deterministic requests are cached (temperature 0 or a seed,
and n = 1); a key is the SHA-256 of the canonical request plus the model's revision and, by
default, the caller's key id, so no caller can probe another's prompts."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from contract.protocol import NO_EFFECT_FIELDS

# Fields that change how a request is delivered, not what it computes.
_DELIVERY_FIELDS = {"stream", "stream_options", *NO_EFFECT_FIELDS}


def is_deterministic(body: dict[str, Any]) -> bool:
    return (body.get("temperature") == 0 or body.get("seed") is not None) and body.get("n", 1) == 1


def canonical_key(endpoint: str, body: dict[str, Any], model_revision: str, scope: str) -> str:
    """SHA-256 over the normalised request: defaults filled in (by pydantic), delivery-only
    fields dropped, keys sorted."""
    payload = {k: v for k, v in sorted(body.items()) if k not in _DELIVERY_FIELDS and v is not None}
    text = json.dumps([endpoint, model_revision, scope, payload], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def embedding_key(model_revision: str, scope: str, dimensions: int | None, text: str) -> str:
    payload = json.dumps(["embedding", model_revision, scope, dimensions, text], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def item_key(kind: str, model_revision: str, scope: str, *parts: str) -> str:
    """The key of one scored item: a rerank (query, document) pair, or a classification input."""
    payload = json.dumps([kind, model_revision, scope, *parts], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()
