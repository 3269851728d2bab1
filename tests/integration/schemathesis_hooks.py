"""schemathesis hooks for the steered run in test_openapi.py: generated requests name a real
model that serves the endpoint (random names only ever reach the 404), with a small token
budget so that each generation stays short. Both changes keep a valid value valid and leave
an invalid one alone."""

from __future__ import annotations

import schemathesis

MODELS = {"/v1/chat/completions": "tiny-llama", "/v1/completions": "tiny-llama", "/v1/embeddings": "tiny-bert",
          "/v1/rerank": "tiny-reranker", "/rerank": "tiny-reranker", "/v1/classify": "tiny-classifier",
          "/tokenize": "tiny-llama", "/detokenize": "tiny-llama"}
MAX_TOKENS = 16


@schemathesis.hook
def map_body(context, body):
    path = context.operation.path if context.operation is not None else ""
    model = MODELS.get(path)
    if model is None or not isinstance(body, dict):
        return body
    # Only valid values are swapped for other valid ones: a negative case stays exactly as
    # invalid as schemathesis made it.
    if isinstance(body.get("model"), str) and body["model"]:
        body = {**body, "model": model}
    for field in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(field), int) and not isinstance(body[field], bool) and body[field] > MAX_TOKENS:
            body[field] = MAX_TOKENS
    return body
