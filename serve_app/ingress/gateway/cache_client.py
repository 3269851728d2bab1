"""The replica's side of the shared response cache.

It knows which keys the shared cache holds (synced every 250 ms as key changes), so a miss
costs no call to the state actor; and it keeps its own small LRU of values, so a repeated hit
costs none either. Cached responses never change under their key (the key includes the
model's load revision), so a copy is as good as the original until its TTL.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

from contract.ingress_args import IngressArgs
from serve_app.ingress.gateway.callers import Caller
from serve_app.state.client import StateClient, StateUnavailable


class CacheClient:

    def __init__(self, state: StateClient, args: IngressArgs, clock: Callable[[], float] = time.monotonic):
        self._state = state
        self.enabled = args.enable_caching
        self._global = args.cache_scope == "global"
        self._ttl_s = args.cache_ttl_s
        self._clock = clock
        self._max_entries = min(args.cache_max_size, 1000)
        self._max_bytes = min(args.cache_max_bytes, 16 * 1024 * 1024)
        self._local: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (value, expires_at)
        self._local_bytes = 0
        self._pending: list[tuple[str, bytes, str]] = []
        self.known: set[str] = set()
        self.version = -1
        self.local_hits = 0
        self.local_misses = 0  # misses answered here, without asking the actor

    def scope(self, caller: Caller) -> str:
        return "global" if self._global else caller.cache_scope

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(keys)
        remote = []
        for i, key in enumerate(keys):
            value = self._local_get(key)
            if value is not None:
                out[i] = value
                self.local_hits += 1
            elif key in self.known:
                remote.append(i)
            else:
                self.local_misses += 1
        if remote:
            try:
                found = await self._state.cache_get([keys[i] for i in remote], timeout_s=0.5)
            except StateUnavailable:
                found = [None] * len(remote)
            for i, item in zip(remote, found, strict=True):
                if item is not None:
                    out[i] = item[0]
                    self._local_put(keys[i], item[0], item[1])
        return out

    def put(self, key: str, value: bytes, model: str) -> None:
        self._pending.append((key, value, model))
        self._local_put(key, value, self._ttl_s)
        self.known.add(key)

    def apply(self, changes) -> None:
        if not changes.complete:
            self.known = set(changes.added)
        else:
            self.known.update(changes.added)
            self.known.difference_update(changes.removed)
        self.version = changes.version

    def take_local_counts(self) -> tuple[int, int]:
        counts = (self.local_hits, self.local_misses)
        self.local_hits = self.local_misses = 0
        return counts

    async def flush(self) -> None:
        if self._pending:
            items, self._pending = self._pending, []
            with contextlib.suppress(StateUnavailable):
                await self._state.cache_put(items)

    def _local_get(self, key: str) -> bytes | None:
        item = self._local.get(key)
        if item is None:
            return None
        if self._clock() >= item[1]:
            self._local_drop(key)
            return None
        self._local.move_to_end(key)
        return item[0]

    def _local_put(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self._max_bytes or ttl_s <= 0:
            return
        if key in self._local:
            self._local_drop(key)
        self._local[key] = (value, self._clock() + ttl_s)
        self._local_bytes += len(value)
        while len(self._local) > self._max_entries or self._local_bytes > self._max_bytes:
            self._local_drop(next(iter(self._local)))

    def _local_drop(self, key: str) -> None:
        value, _ = self._local.pop(key)
        self._local_bytes -= len(value)
