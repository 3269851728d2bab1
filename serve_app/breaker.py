"""Circuit breaker per model. Pure logic with an injected clock.

CLOSED -> OPEN after `threshold` consecutive failures (model-side 5xx, timeouts, replica
death; client errors do not count). OPEN rejects until `timeout_s` has passed, then the
breaker is HALF_OPEN and lets exactly one probe through: success closes it, failure opens it
again. As in Envoy's outlier detection and resilience4j:
- failures reported while OPEN (requests already in flight when it opened) are counted but do
  not restart the open time;
- a replacement replica that Serve reports healthy (`replaced()`) ends the open time at once:
  the next request is the probe, instead of every caller waiting out a fault that is gone.
The authoritative breakers live in the shared state actor; ingress replicas keep a copy
refreshed every 250 ms and ask the actor for the single probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Snapshot:
    state: State
    consecutive_failures: int
    retry_after_s: float  # while OPEN: time left open


class CircuitBreaker:
    def __init__(self, threshold: int, timeout_s: float, clock: Callable[[], float]):
        self.threshold = threshold
        self.timeout_s = timeout_s
        self._clock = clock
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False

    def snapshot(self) -> Snapshot:
        state = self._current()
        left = max(0.0, self._opened_at + self.timeout_s - self._clock()) if state is State.OPEN else 0.0
        return Snapshot(state, self._failures, left)

    def allow(self) -> bool:
        """May a request go to the model now? In HALF_OPEN only the first caller may."""
        state = self._current()
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def record_success(self) -> None:
        self._state = State.CLOSED
        self._failures = 0
        self._probe_out = False

    def record_failure(self) -> None:
        state = self._current()
        self._failures += 1
        if state is State.OPEN:
            return  # a late report of the same fault: the open time stands
        if state is State.HALF_OPEN or self._failures >= self.threshold:
            self._state = State.OPEN
            self._opened_at = self._clock()
            self._probe_out = False

    def replaced(self) -> None:
        """The model has a new healthy replica: an OPEN breaker lets the next request probe."""
        if self._current() is State.OPEN:
            self._state = State.HALF_OPEN
            self._probe_out = False

    def _current(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.timeout_s:
            self._state = State.HALF_OPEN
            self._probe_out = False
        return self._state
