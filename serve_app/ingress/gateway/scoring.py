"""The gateway's flow for scoring endpoints (/v1/rerank, /v1/classify): the cache works per item
(a rerank document with its query, a classification input), so a request whose items were
partly seen before sends only the new ones to the model, as embeddings do.

Each item's cache value is JSON holding its token count and whatever the endpoint needs to
rebuild its answer; the model computes the missing items in one call, bounded by its progress
(a request of many items spans several batches). The cached items' tokens go with the call, so
that the replica's cap (max_request_tokens) covers the whole request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from contract.model_api import request_tokens_exceeded
from observability import catalogue
from serve_app.ingress.gateway.quota import Admission

if TYPE_CHECKING:
    from serve_app.ingress.gateway.orchestrator import Gateway

# compute(indices of the items the cache lacked, tokens of the cached ones)
#   -> (their values, tokens the model computed)
Compute = Callable[[list[int], int], Awaitable[tuple[list[dict[str, Any]], int]]]


@dataclass
class Scored:
    items: list[dict[str, Any]]  # one per item: {"tokens": n, ...the endpoint's fields}
    computed_tokens: int  # what the model computed now (cached items cost nothing)
    cache: Literal["HIT", "MISS"] | None

    @property
    def total_tokens(self) -> int:
        return sum(item["tokens"] for item in self.items)


async def score_items(gateway: Gateway, model: str, admission: Admission, keys: list[str | None], *,
                      kind: str, no_cache: bool, compute: Compute, param: str) -> Scored:
    """Each item from the cache where its key is there, the rest from `compute`, which only
    runs past the model's breaker. A key of None is an item that is not cached. Cached items
    over max_request_tokens on their own are the 400 on `param` here."""
    cache = gateway.cache
    found: dict[str, bytes] = {}
    lookup = [key for key in keys if key is not None]
    if lookup and not no_cache:
        for key, value in zip(lookup, await cache.get_many(lookup), strict=True):
            if value is not None:
                found[key] = value
        gateway.metrics.inc(catalogue.CACHE_HITS, len(found), model=model, kind=kind)
        gateway.metrics.inc(catalogue.CACHE_MISSES, len(lookup) - len(found), model=model, kind=kind)
    items: list[dict[str, Any] | None] = [json.loads(found[key]) if key in found else None for key in keys]
    missing = [i for i, item in enumerate(items) if item is None]
    counted = sum(item["tokens"] for item in items if item is not None)
    if counted > gateway.args.max_request_tokens:
        gateway.quota.settle(admission, 0)
        raise request_tokens_exceeded(counted, gateway.args.max_request_tokens, param)
    computed = 0
    if missing:
        await gateway.admit_to_model(model, admission)
        fresh, computed = await compute(missing, counted)
        for i, item in zip(missing, fresh, strict=True):
            items[i] = item
            if keys[i] is not None:
                cache.put(keys[i], json.dumps(item).encode(), model)
    cache_result = ("MISS" if missing else "HIT") if cache.enabled else None
    return Scored([item for item in items if item is not None], computed, cache_result)


async def call_scoring_model(gateway: Gateway, entry, method: str, request, admission: Admission):
    """One model call for the missing items, bounded by the model's progress: a call of many
    items runs several batches, and a replica lost with its node is still a 504 in time."""
    timeout = entry.info.request_timeout_s
    call = entry.client.call_with_progress(method, request, timeout, on_start=gateway.queue_timer(request.model))
    return await gateway.call_model(call, request.model, timeout, admission, bounded=False)
