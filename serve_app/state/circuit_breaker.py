"""Circuit breaker per model. Pure logic with an injected clock.

CLOSED -> OPEN after `threshold` consecutive failures (model-side 5xx, timeouts, replica death),
but only once the model itself is shown to fail: by failures of two callers or more, by one no
caller's request caused (caller None: Serve lost the replicas), or by a failed probe, a small
request of the ingress's own that one caller's failures alone make due. OPEN rejects until
`timeout_s` has passed (or a healthy replacement replica ends it), then HALF_OPEN: one probe,
claimed across every ingress replica, closes or reopens it. Late failures do not extend the open
time (Envoy's outlier detection, resilience4j). The state actor holds the authoritative copies.
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
    probe_due: bool = False  # CLOSED, but one caller's failures reached the threshold: a probe decides


class CircuitBreaker:
    def __init__(self, threshold: int, timeout_s: float, clock: Callable[[], float]):
        self.threshold = threshold
        self.timeout_s = timeout_s
        self._clock = clock
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        # Evidence that the model itself fails, gathered since the last success (or HALF_OPEN):
        # the callers whose requests failed (two suffice), and failures no caller caused.
        self._callers: set[str] = set()
        self._model_failed = False
        self._probe_due = False
        self._probe_out_at: float | None = None  # when the one probe was claimed, if it is out

    def snapshot(self) -> Snapshot:
        state = self._current()
        left = max(0.0, self._opened_at + self.timeout_s - self._clock()) if state is State.OPEN else 0.0
        return Snapshot(state, self._failures, left, state is State.CLOSED and self._probe_due)

    def allow(self) -> bool:
        """May a request go to the model now? In HALF_OPEN only the probe's claimant may."""
        return self._current() is State.CLOSED or self.claim_probe()

    def claim_probe(self) -> bool:
        """True to exactly one claimant while a probe is due (HALF_OPEN, or CLOSED with one
        caller's failures at the threshold). The claim lapses after timeout_s without a result,
        so an ingress that died probing does not hold the model in HALF_OPEN for ever."""
        state = self._current()
        if not (state is State.HALF_OPEN or (state is State.CLOSED and self._probe_due)):
            return False
        now = self._clock()
        if self._probe_out_at is not None and now - self._probe_out_at < self.timeout_s:
            return False
        self._probe_out_at = now
        return True

    def record_success(self) -> None:
        self._state = State.CLOSED
        self._failures = 0
        self._forget_evidence()

    def record_failure(self, caller: str | None = None) -> None:
        """A failed call of `caller` (an API key id, or one id for every anonymous request);
        None: a failure no request caused, such as Serve reporting the replicas lost."""
        state = self._current()
        self._failures += 1
        if caller is None:
            self._model_failed = True
        elif len(self._callers) < 2:  # two are proof enough: the set stays small
            self._callers.add(caller)
        if state is State.OPEN:
            return  # a late report of the same fault: the open time stands
        confirmed = self._model_failed or len(self._callers) >= 2
        if state is State.HALF_OPEN:
            if confirmed:
                self._open()
        elif self._failures >= self.threshold:
            if confirmed:
                self._open()
            else:
                self._probe_due = True

    def record_probe(self, ok: bool | None) -> None:
        """The claimed probe's result: True closes the breaker, False opens it, None (the model
        was too busy to tell) only frees the claim."""
        self._probe_out_at = None
        if ok is True:
            self.record_success()
        elif ok is False and self._current() is not State.OPEN:
            self._open()

    def replaced(self) -> None:
        """The model has a new healthy replica: an OPEN breaker lets the next request probe."""
        if self._current() is State.OPEN:
            self._half_open()

    def _open(self) -> None:
        self._state = State.OPEN
        self._opened_at = self._clock()
        self._probe_due = False
        self._probe_out_at = None

    def _half_open(self) -> None:
        self._state = State.HALF_OPEN
        self._forget_evidence()  # the fault may be gone: reopening needs evidence of its own

    def _forget_evidence(self) -> None:
        self._callers.clear()
        self._model_failed = False
        self._probe_due = False
        self._probe_out_at = None

    def _current(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.timeout_s:
            self._half_open()
        return self._state
