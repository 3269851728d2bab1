"""Circuit breaker transitions with an injected clock."""

from __future__ import annotations

from serve_app.breaker import CircuitBreaker, State
from tests.unit.fakes import Clock


def test_opens_after_consecutive_failures_only():
    breaker = CircuitBreaker(threshold=3, timeout_s=10, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.snapshot().state is State.CLOSED
    breaker.record_failure()
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN and snapshot.retry_after_s == 10
    assert not breaker.allow()


def test_half_open_lets_one_probe_then_closes_on_success():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, timeout_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 3
    assert breaker.snapshot().retry_after_s == 2
    clock.now = 5
    assert breaker.snapshot().state is State.HALF_OPEN
    assert breaker.allow() is True
    assert breaker.allow() is False  # only one probe
    breaker.record_success()
    assert breaker.snapshot().state is State.CLOSED and breaker.allow()


def test_failed_probe_reopens():
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, timeout_s=5, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now = 6
    assert breaker.allow()
    breaker.record_failure()
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN and snapshot.retry_after_s == 5


def test_failures_while_open_do_not_extend_the_open_time():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, timeout_s=10, clock=clock)
    breaker.record_failure()
    clock.now = 8
    breaker.record_failure()  # a request that was in flight when it opened
    breaker.record_failure()
    snapshot = breaker.snapshot()
    assert snapshot.state is State.OPEN and snapshot.retry_after_s == 2
    assert snapshot.consecutive_failures == 3
    clock.now = 10
    assert breaker.snapshot().state is State.HALF_OPEN


def test_a_replacement_replica_ends_the_open_time():
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, timeout_s=60, clock=clock)
    breaker.replaced()  # closed: nothing to do
    assert breaker.snapshot().state is State.CLOSED
    breaker.record_failure()
    clock.now = 1
    breaker.replaced()
    assert breaker.snapshot().state is State.HALF_OPEN
    assert breaker.allow() is True and breaker.allow() is False  # still exactly one probe
    breaker.record_success()
    assert breaker.snapshot().state is State.CLOSED
