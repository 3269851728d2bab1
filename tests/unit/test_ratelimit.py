"""Sliding windows, leases and settlement, with an injected clock."""

from __future__ import annotations

import math

from serve_app.state.rate_limiter import (
    WINDOW_S,
    Limits,
    LocalLease,
    RateLimiter,
    chunk_for,
    format_duration,
    rate_limit_headers,
)
from tests.unit.fakes import Clock


def test_requests_are_limited_over_a_sliding_minute():
    clock = Clock(1000.0)
    limiter = RateLimiter(clock)
    limits = Limits(rpm=3, tpm=10_000)
    grants = []
    for _ in range(3):
        grants.append(limiter.lease("k", limits, 1, 10, 1, 10))
        clock.now += 10
    assert all(g.requests == 1 for g in grants)
    refused = limiter.lease("k", limits, 1, 10, 1, 10)
    assert refused.requests == 0
    # the first entry (t=1000) leaves the window at t=1060; now is 1030
    assert math.isclose(refused.retry_after_s, 30.0)
    clock.now = 1000 + WINDOW_S + 0.001
    assert limiter.lease("k", limits, 1, 10, 1, 10).requests == 1


def test_tokens_are_limited_and_settlement_refunds():
    clock = Clock(1000.0)
    limiter = RateLimiter(clock)
    limits = Limits(rpm=100, tpm=1000)
    first = limiter.lease("k", limits, 1, 800, 1, 800)
    assert first.tokens == 800
    assert limiter.lease("k", limits, 1, 300, 1, 300).requests == 0  # 800 + 300 > 1000
    limiter.give_back("k", first.lease_id, 0, 600)  # it used 200, not 800
    assert limiter.usage("k") == (1, 200)
    assert limiter.lease("k", limits, 1, 300, 1, 300).requests == 1


def test_extra_usage_is_charged():
    clock = Clock(1000.0)
    limiter = RateLimiter(clock)
    grant = limiter.lease("k", Limits(10, 1000), 1, 100, 1, 100)
    limiter.give_back("k", grant.lease_id, 0, -150)  # used 250 against a reservation of 100
    assert limiter.usage("k") == (1, 250)


def test_leases_grant_chunks_but_never_past_the_limit():
    clock = Clock(1000.0)
    limiter = RateLimiter(clock)
    limits = Limits(rpm=10, tpm=10_000)
    grant = limiter.lease("k", limits, 1, 1, 8, 1)
    assert grant.requests == 8 and grant.remaining_requests == 2
    second = limiter.lease("k", limits, 1, 1, 8, 1)
    assert second.requests == 2 and second.remaining_requests == 0  # only what is left
    limiter.give_back("k", grant.lease_id, 5, 0)  # 5 of the first chunk were never used
    assert limiter.usage("k")[0] == 5


def test_two_replicas_leasing_never_exceed_the_limit():
    clock = Clock(1000.0)
    limiter = RateLimiter(clock)
    limits = Limits(rpm=10, tpm=10**6)
    replicas = [None, None]
    admitted = 0
    for attempt in range(50):
        r = attempt % 2
        lease = replicas[r]
        if lease is None or not lease.covers(clock(), 1, limits):
            grant = limiter.lease("k", limits, 1, 1, chunk_for(limits.rpm), 1)
            if grant.requests == 0:
                continue
            lease = replicas[r] = LocalLease.of(grant, clock())
        lease.take(1)
        admitted += 1
        clock.now += 0.5
    assert admitted == 10


def test_a_request_bigger_than_the_limit_can_never_fit():
    limiter = RateLimiter(Clock(1000.0))
    refused = limiter.lease("k", Limits(10, 100), 1, 500, 1, 500)
    assert refused.requests == 0 and math.isinf(refused.retry_after_s)


def test_windows_are_per_key():
    limiter = RateLimiter(Clock(1000.0))
    limits = Limits(1, 100)
    assert limiter.lease("a", limits, 1, 1, 1, 1).requests == 1
    assert limiter.lease("b", limits, 1, 1, 1, 1).requests == 1
    assert limiter.lease("a", limits, 1, 1, 1, 1).requests == 0


def test_local_lease_expires():
    limiter = RateLimiter(Clock(1000.0), lease_s=2.0)
    limits = Limits(100, 1000)
    lease = LocalLease.of(limiter.lease("k", limits, 1, 1, 5, 50), 1000.0)
    assert lease.covers(1000.0, 10, limits)
    assert not lease.covers(1002.0, 10, limits)
    assert not lease.covers(1000.0, 60, limits)
    assert not lease.covers(1000.0, 10, Limits(100, 2000))  # the key's limits changed: lease anew


def test_a_lease_expires_by_the_replicas_clock_not_the_state_actors():
    """Monotonic clocks of two nodes have nothing in common: a lease is good for lease_s from
    its receipt, whatever the actor's clock read when it granted it."""
    limits = Limits(100, 1000)
    grant = RateLimiter(Clock(1000.0), lease_s=2.0).lease("k", limits, 1, 1, 5, 50)
    lease = LocalLease.of(grant, 5.0)  # the replica's node booted later
    assert lease.covers(6.9, 10, limits)
    assert not lease.covers(7.0, 10, limits)
    late = LocalLease.of(grant, 50_000.0)  # or much earlier
    assert late.covers(50_001.0, 10, limits)


def test_headers_have_both_families():
    headers = rate_limit_headers(Limits(60, 1000), 59, 900, 6.2, 0.25, 1_700_000_000.0)
    assert headers["X-RateLimit-Limit"] == "60"
    assert headers["X-RateLimit-Remaining"] == "59"
    assert headers["X-RateLimit-Reset"] == "1700000007"
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "59"
    assert headers["x-ratelimit-reset-requests"] == "7s"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "900"
    assert headers["x-ratelimit-reset-tokens"] == "250ms"


def test_format_duration():
    assert format_duration(0) == "0s"
    assert format_duration(0.0004) == "1ms"
    assert format_duration(6) == "6s"
    assert format_duration(90) == "1m30s"
    assert chunk_for(10) == 1 and chunk_for(6000) == 120
