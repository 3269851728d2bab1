"""The flow the per-item endpoints share (/v1/embeddings, /v1/rerank, /v1/classify): the cache
works per item (an input, a rerank document with its query), so a request whose items were
partly seen before sends only the new ones to the model, with the cached ones' token count:
the replica's cap (max_request_tokens) covers the whole request.

An item is a dict holding its token count ("tokens") and whatever its endpoint needs to rebuild
its answer; a Codec says how it is stored (JSON unless the endpoint says otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from contract.model_api import request_tokens_exceeded
from serve_app.ingress.gateway import request_record
from serve_app.ingress.gateway.cache_client import CacheClient
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.gateway.model_call import ModelCall
from serve_app.ingress.gateway.quota import Admission, Quota
from serve_app.ingress.gateway.usage import UsageRecorder

Item = dict[str, Any]
X = TypeVar("X")

# compute(indices of the items the cache lacked, tokens of the cached ones)
#   -> (their items, tokens the model computed)
Compute = Callable[[list[int], int], Awaitable[tuple[list[Item], int]]]


@dataclass(frozen=True)
class Codec:
    encode: Callable[[Item], bytes]
    decode: Callable[[bytes], Item]


JSON = Codec(lambda item: json.dumps(item).encode(), json.loads)


@dataclass
class Items:
    items: list[Item]  # one per item, in the request's order
    total_tokens: int  # cached and computed alike: the request's usage
    cache: Literal["HIT", "MISS"] | None


class ItemFlow:
    def __init__(self, cache: CacheClient, quota: Quota, usage: UsageRecorder, calls: ModelCall,
                 max_request_tokens: int):
        self._cache = cache
        self._quota = quota
        self._usage = usage
        self._calls = calls
        self.max_request_tokens = max_request_tokens

    async def admit(self, caller: Caller, tokens: int, param: str) -> Admission:
        """Reserve the request's estimated tokens; a request over its key's limit is told to
        shrink `param`."""
        return await self._quota.admit(caller, tokens, too_large_param=param)

    def keys(self, caller: Caller, items: Sequence[X], key: Callable[[str, X], str | None]) -> list[str | None]:
        """Each item's cache key, key(the caller's cache scope, item); None for every item when
        caching is off (key may also say None: an item that is not cached)."""
        scope = self._cache.scope(caller)
        return [key(scope, item) if self._cache.enabled else None for item in items]

    async def run(self, caller: Caller, model: str, admission: Admission, keys: list[str | None], *, kind: str,
                  param: str, no_cache: bool, compute: Compute, codec: Codec = JSON) -> Items:
        """Each item from the cache where its key is there, the rest from `compute`, which only
        runs past the model's breaker; then the tokens settled and the usage recorded. Cached
        items over max_request_tokens on their own are the 400 on `param` here."""
        found: dict[str, bytes] = {}
        lookup = [key for key in keys if key is not None]
        if lookup and not no_cache:
            for key, value in zip(lookup, await self._cache.get_many(lookup), strict=True):
                if value is not None:
                    found[key] = value
            if (record := request_record.current()) is not None:
                record.looked_up(kind, len(found), len(lookup) - len(found))
        items: list[Item | None] = [codec.decode(found[key]) if key in found else None for key in keys]
        missing = [i for i, item in enumerate(items) if item is None]
        counted = sum(item["tokens"] for item in items if item is not None)
        if counted > self.max_request_tokens:
            self._quota.settle(admission, 0)
            raise request_tokens_exceeded(counted, self.max_request_tokens, param)
        computed = 0
        if missing:
            await self._calls.admit(model, admission)
            fresh, computed = await compute(missing, counted)
            for i, item in zip(missing, fresh, strict=True):
                items[i] = item
                key = keys[i]
                if key is not None:
                    self._cache.put(key, codec.encode(item), model)
        self._quota.settle(admission, computed)
        answered = [item for item in items if item is not None]
        total = sum(item["tokens"] for item in answered)
        self._usage.record(caller, total, 0)
        return Items(answered, total, ("MISS" if missing else "HIT") if self._cache.enabled else None)
