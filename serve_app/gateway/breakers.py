"""Circuit breakers on the replica's side: a copy of every model's breaker, synced from the
state actor, that rejects requests to an open model without a call; failures are reported
at once, successes only when there is something to reset, and in HALF_OPEN the single probe
is claimed from the actor so that exactly one request across every replica tries the model.
"""

from __future__ import annotations

import contextlib
import math

from contract.errors import ServiceUnavailableError

from ..breaker import Snapshot, State
from ..state import StateClient, StateUnavailable


class Breakers:
    def __init__(self, state: StateClient, enabled: bool):
        self._state = state
        self.enabled = enabled
        self.snapshots: dict[str, Snapshot] = {}

    def raise_if_open(self, model: str) -> None:
        snapshot = self.snapshots.get(model)
        if self.enabled and snapshot is not None and snapshot.state is State.OPEN and snapshot.retry_after_s > 0:
            raise ServiceUnavailableError(
                f"The model '{model}' is failing; its circuit breaker is open.",
                code="model_unavailable",
                retry_after_s=max(1, math.ceil(snapshot.retry_after_s)),
            )

    async def admit(self, model: str) -> None:
        snapshot = self.snapshots.get(model)
        if not self.enabled or snapshot is None or snapshot.state is State.CLOSED:
            return
        self.raise_if_open(model)
        try:  # HALF_OPEN (or OPEN whose time is up): exactly one probe, across every replica
            allowed = await self._state.call("breaker_probe", model)
        except StateUnavailable:
            allowed = True
        if not allowed:
            raise ServiceUnavailableError(
                f"The model '{model}' is recovering; retry shortly.", code="model_unavailable", retry_after_s=1
            )

    async def report(self, model: str, ok: bool) -> None:
        if not self.enabled:
            return
        snapshot = self.snapshots.get(model)
        if ok and (snapshot is None or (snapshot.state is State.CLOSED and snapshot.consecutive_failures == 0)):
            return  # nothing to reset: successes cost no call to the actor
        with contextlib.suppress(StateUnavailable):
            self.snapshots[model] = await self._state.call("breaker_report", model, ok)

    def status_of(self, model: str) -> str | None:
        snapshot = self.snapshots.get(model)
        if snapshot is None or snapshot.state is State.CLOSED:
            return None
        return "circuit_open" if snapshot.state is State.OPEN else "circuit_half_open"
