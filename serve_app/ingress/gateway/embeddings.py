"""The gateway's flow for /v1/embeddings: the cache works per input string, so a request whose
inputs were partly seen before sends only the new ones to the model, with the cached ones' token
count: the replica's cap (max_request_tokens) covers the whole request.

Cached entries hold the input's token count and its float32 vector; the model is always asked
for base64 (the cheapest to carry across the handle) and the answer is re-encoded in the
format the client asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from contract.errors import InvalidRequestError
from contract.model_api import request_tokens_exceeded, with_token_budget
from contract.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from contract.vectors import decode_base64_vector, encode_vector
from observability import catalogue
from serve_app.ingress.gateway.cache_keys import embedding_key
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.gateway.reply import Reply
from serve_app.ingress.model_directory import ModelEntry

if TYPE_CHECKING:
    from serve_app.ingress.gateway.orchestrator import Gateway


def reservation(request: EmbeddingRequest) -> int:
    """Tokens reserved at admission: about four characters per token, plus the special tokens."""
    return sum(len(item) // 4 + 2 if isinstance(item, str) else len(item) for item in request.inputs())


async def embed(gateway: Gateway, entry: ModelEntry, caller: Caller, request: EmbeddingRequest, no_cache: bool) -> Reply:
    assert entry.client is not None and entry.info is not None
    inputs = request.inputs()
    if len(inputs) > gateway.args.max_embedding_inputs:
        raise InvalidRequestError(
            f"input has {len(inputs)} items; at most {gateway.args.max_embedding_inputs} are allowed per request.",
            param="input",
        )
    cache = gateway.cache
    admission = await gateway.quota.admit(caller, reservation(request), too_large_param="input")
    scope = cache.scope(caller)
    keys = [
        embedding_key(entry.info.revision, scope, request.dimensions, item) if isinstance(item, str) and cache.enabled else None
        for item in inputs
    ]
    lookup = [key for key in keys if key is not None]
    found: dict[str, bytes] = {}
    if lookup and not no_cache:
        for key, value in zip(lookup, await cache.get_many(lookup), strict=True):
            if value is not None:
                found[key] = value
        hits = len(found)
        gateway.metrics.inc(catalogue.CACHE_HITS, hits, model=request.model, kind="embedding")
        gateway.metrics.inc(catalogue.CACHE_MISSES, len(lookup) - hits, model=request.model, kind="embedding")
    missing = [i for i, key in enumerate(keys) if key is None or key not in found]
    vectors: dict[int, np.ndarray] = {}
    tokens: list[int] = [0] * len(inputs)
    for i, key in enumerate(keys):
        if key is not None and key in found:
            tokens[i], vectors[i] = _unpack(found[key])
    counted = sum(tokens)  # the cached inputs' exact counts; the replica counts the rest
    if counted > gateway.args.max_request_tokens:
        gateway.quota.settle(admission, 0)
        raise request_tokens_exceeded(counted, gateway.args.max_request_tokens, "input")
    computed_tokens = 0
    if missing:
        await gateway.admit_to_model(request.model, admission)
        sub = with_token_budget(request.model_copy(update={"input": [inputs[i] for i in missing], "encoding_format": "base64"}),
                                gateway.args.max_request_tokens, counted)
        timeout = entry.info.request_timeout_s
        if len(missing) <= (entry.info.max_batch_size or 32):  # one batch: bounded outright, the cheapest call
            response = await gateway.call_model(entry.client.embed(sub), request.model, timeout, admission)
        else:  # several batches: bounded by the model's progress
            call = entry.client.call_with_progress("embed", sub, timeout, on_start=gateway.queue_timer(request.model))
            response = await gateway.call_model(call, request.model, timeout, admission, bounded=False)
        per_input = response.usage.input_tokens or [0] * len(missing)
        for i, data, count in zip(missing, response.data, per_input, strict=True):
            vector = decode_base64_vector(data.embedding)
            vectors[i], tokens[i] = vector, count
            if keys[i] is not None:
                cache.put(keys[i], _pack(count, vector), request.model)
        computed_tokens = response.usage.prompt_tokens
    gateway.quota.settle(admission, computed_tokens)
    total = sum(tokens)
    gateway.usage.record(caller, total, 0)
    result = EmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=encode_vector(vectors[i], request.encoding_format)) for i in range(len(inputs))],
        model=request.model,
        usage=EmbeddingUsage(prompt_tokens=total, total_tokens=total),
    )
    return Reply(result, admission.headers, ("MISS" if missing else "HIT") if cache.enabled else None)


def _pack(tokens: int, vector: np.ndarray) -> bytes:
    return int(tokens).to_bytes(4, "little") + vector.astype("<f4").tobytes()


def _unpack(value: bytes) -> tuple[int, np.ndarray]:
    return int.from_bytes(value[:4], "little"), np.frombuffer(value[4:], dtype="<f4")
