"""Response cache: LRU by count and bytes, TTL, canonical keys."""

from __future__ import annotations

from serve_app.ingress.gateway.cache_keys import canonical_key, embedding_key, is_deterministic
from serve_app.state.response_cache import ResponseCache
from tests.unit.fakes import Clock


def test_lru_by_entries():
    cache = ResponseCache(max_entries=2, max_bytes=10**6, ttl_s=100, clock=Clock())
    cache.put("a", b"1", "m")
    cache.put("b", b"2", "m")
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.put("c", b"3", "m")
    assert cache.get("b") is None
    assert cache.get("a") == b"1" and cache.get("c") == b"3"


def test_lru_by_bytes():
    cache = ResponseCache(max_entries=100, max_bytes=10, ttl_s=100, clock=Clock())
    cache.put("a", b"12345", "m")
    cache.put("b", b"12345", "m")
    cache.put("c", b"123", "m")
    assert cache.get("a") is None
    assert cache.stats().bytes == 8
    cache.put("huge", b"x" * 11, "m")  # bigger than the whole cache: not stored, nothing evicted
    assert cache.get("huge") is None and cache.get("b") == b"12345"


def test_ttl():
    clock = Clock()
    cache = ResponseCache(max_entries=10, max_bytes=100, ttl_s=5, clock=clock)
    cache.put("a", b"1", "m")
    clock.now = 4.9
    assert cache.get("a") == b"1"
    clock.now = 10.1  # stored at 0
    assert cache.get("a") is None
    assert cache.stats().entries == 0


def test_stats_and_invalidation():
    cache = ResponseCache(max_entries=10, max_bytes=100, ttl_s=5, clock=Clock())
    cache.put("a", b"1", "m1")
    cache.put("b", b"2", "m2")
    cache.get("a")
    cache.get("zzz")
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hit_rate) == (1, 1, 0.5)
    assert cache.invalidate_model("m1") == 1
    assert cache.get("a") is None and cache.get("b") == b"2"


def test_deterministic_requests_only():
    assert is_deterministic({"temperature": 0, "n": 1})
    assert is_deterministic({"temperature": 0.7, "seed": 3, "n": 1})
    assert not is_deterministic({"temperature": 0.7, "n": 1})
    assert not is_deterministic({"temperature": 0, "n": 2})


def test_canonical_key_ignores_delivery_and_order():
    a = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "stream": False}
    b = {"stream": True, "temperature": 0, "messages": [{"role": "user", "content": "hi"}], "model": "m",
         "stream_options": {"include_usage": True}, "user": "x"}
    assert canonical_key("chat", a, "rev1", "key_1") == canonical_key("chat", b, "rev1", "key_1")
    assert canonical_key("chat", a, "rev1", "key_1") != canonical_key("chat", a, "rev2", "key_1")  # reloaded model
    assert canonical_key("chat", a, "rev1", "key_1") != canonical_key("chat", a, "rev1", "key_2")  # per key
    assert canonical_key("chat", a, "rev1", "key_1") != canonical_key("complete", a, "rev1", "key_1")
    assert canonical_key("chat", a, "r", "s") != canonical_key("chat", {**a, "max_tokens": 5}, "r", "s")
    assert embedding_key("r", "s", None, "x") != embedding_key("r", "s", 8, "x")


def test_key_changes_let_replicas_skip_the_actor_on_misses():
    cache = ResponseCache(max_entries=2, max_bytes=100, ttl_s=100, clock=Clock(), log_size=3)
    cache.put("a", b"1", "m")
    cache.put("b", b"2", "m")
    changes = cache.changes_since(0)
    assert (changes.added, changes.removed, changes.complete) == (["a", "b"], [], True)
    cache.put("c", b"3", "m")  # evicts a
    later = cache.changes_since(changes.version)
    assert set(later.added) == {"c"} and later.removed == ["a"] and later.complete
    assert cache.changes_since(cache.version).added == []
    stale = cache.changes_since(0)  # the log (3 entries) no longer reaches back to 0
    assert not stale.complete and set(stale.added) == {"b", "c"}


def test_values_come_with_their_remaining_lifetime():
    clock = Clock()
    cache = ResponseCache(max_entries=10, max_bytes=100, ttl_s=10, clock=clock)
    cache.put("a", b"1", "m")
    clock.now = 4
    assert cache.get_many(["a", "b"]) == [(b"1", 6), None]
