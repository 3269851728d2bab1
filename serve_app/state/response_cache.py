"""The response cache the state actor holds: LRU by entry count and bytes, plus a TTL. Pure
logic, injected clock. The ingress makes the keys (ingress/gateway/cache_keys.py)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Item:
    value: bytes
    model: str
    stored_at: float


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "bytes": self.bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hit_rate, 4),
        }


@dataclass(frozen=True)
class Changes:
    """Which keys came and went since a version: lets ingress replicas know locally which
    keys exist, so a miss never needs a call to the state actor."""

    version: int
    added: list[str]
    removed: list[str]
    complete: bool  # False: the log no longer reaches back that far; `added` is every key


class ResponseCache:
    def __init__(self, *, max_entries: int, max_bytes: int, ttl_s: float, clock: Callable[[], float], log_size: int = 100_000):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self.version = 0
        self._log: deque[tuple[int, str, bool]] = deque(maxlen=log_size)  # (version, key, added)

    def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None or self._clock() - item.stored_at > self.ttl_s:
            if item is not None:
                self._remove(key)
            self._misses += 1
            return None
        self._items.move_to_end(key)
        self._hits += 1
        return item.value

    def get_many(self, keys: list[str]) -> list[tuple[bytes, float] | None]:
        """Values with the seconds each has left to live (replicas keep copies that long)."""
        now = self._clock()
        out: list[tuple[bytes, float] | None] = []
        for key in keys:
            value = self.get(key)
            out.append(None if value is None else (value, self.ttl_s - (now - self._items[key].stored_at)))
        return out

    def put(self, key: str, value: bytes, model: str) -> None:
        if len(value) > self.max_bytes:
            return  # would evict everything else and still not fit
        if key in self._items:
            self._remove(key)
        self._items[key] = _Item(value, model, self._clock())
        self._bytes += len(value)
        self._record(key, True)
        self.trim()

    def trim(self) -> None:
        """Evict the least recently used entries until both limits hold."""
        while self._items and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
            self._remove(next(iter(self._items)))

    def invalidate_model(self, model: str) -> int:
        doomed = [key for key, item in self._items.items() if item.model == model]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def count_local(self, hits: int, misses: int) -> None:
        """Lookups that ingress replicas answered from their own copies and key lists."""
        self._hits += hits
        self._misses += misses

    def stats(self) -> CacheStats:
        return CacheStats(len(self._items), self._bytes, self._hits, self._misses)

    def changes_since(self, version: int) -> Changes:
        if version == self.version:
            return Changes(self.version, [], [], True)
        oldest = self._log[0][0] if self._log else self.version + 1
        if version < oldest - 1 or version > self.version:
            return Changes(self.version, list(self._items), [], False)
        added: dict[str, bool] = {}
        for entry_version, key, was_added in self._log:
            if entry_version > version:
                added[key] = was_added
        return Changes(self.version, [k for k, a in added.items() if a], [k for k, a in added.items() if not a], True)

    def _remove(self, key: str) -> None:
        item = self._items.pop(key)
        self._bytes -= len(item.value)
        self._record(key, False)

    def _record(self, key: str, added: bool) -> None:
        self.version += 1
        self._log.append((self.version, key, added))
