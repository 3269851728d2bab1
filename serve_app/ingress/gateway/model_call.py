"""One call to a model, past its circuit breaker and back: the breaker's admission (a refusal
refunds the whole admission), the time the call waited in Serve's queue, the call with its
timeout or progress bound, and what its failure means (failures.py) for the client, the
breaker and the caller's tokens; a call cancelled because its client left settles nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from contract.errors import APIError
from serve_app.ingress.gateway import request_record
from serve_app.ingress.gateway.breaker_gate import Breakers
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.gateway.failures import (
    classify_failure,
    is_cancellation,
    never_ran,
    own_failure,
)
from serve_app.ingress.gateway.quota import Admission, Quota
from serve_app.ingress.model_directory import ModelEntry


class ModelCall:
    def __init__(self, breakers: Breakers, quota: Quota):
        self._breakers = breakers
        self._quota = quota

    async def admit(self, model: str, admission: Admission) -> None:
        """The breaker's word before a model call; a refusal refunds the admission."""
        try:
            await self._breakers.admit(model)
        except APIError:
            self._quota.refund(admission)
            raise

    def queue_timer(self, model: str) -> Callable[..., None]:
        """Called with a call's first heartbeat or chunk, and the seconds the replica worked
        before sending it (a stream's prefill): the time the call waited in Serve's queue, noted
        on the request's record (hf_server_request_queue_seconds)."""
        sent = time.monotonic()
        record = request_record.current()

        def started(replica_s: float = 0.0) -> None:
            if record is not None:
                record.queued_s.append(max(0.0, time.monotonic() - sent - replica_s))

        return started

    async def with_progress(self, entry: ModelEntry, method: str, request: Any, admission: Admission) -> Any:
        """A call bounded by the model's progress, not a total time: a generation may run long,
        and a call of many items runs several batches; a replica lost with its node is still a
        504 in time."""
        assert entry.client is not None and entry.info is not None
        timeout = entry.info.request_timeout_s
        call = entry.client.call_with_progress(method, request, timeout, on_start=self.queue_timer(request.model))
        return await self.run(call, request.model, timeout, admission, bounded=False)

    async def run(self, call: Awaitable[Any], model: str, timeout_s: float, admission: Admission, *,
                  bounded: bool = True, healthy: bool = True) -> Any:
        """A whole (non-streaming) model call: its timeout (unless the call bounds itself by
        progress: bounded=False), the breaker report (of a success only where it shows the model
        healthy), and on failure the refund of the reserved tokens and the error the client gets."""
        try:
            response = await (asyncio.wait_for(call, timeout_s) if bounded else call)
        except BaseException as exc:
            if is_cancellation(exc):
                self._quota.settle(admission, 0)
                raise asyncio.CancelledError from None
            error, own = await self.failure(exc, model, timeout_s, admission.caller)
            # A request shown to fail by itself is charged its reservation: its caller's limits
            # pay for the work it cost, never the model's breaker. One the model never ran costs
            # nothing, not even its request.
            if never_ran(error):
                self._quota.refund(admission)
            else:
                self._quota.settle(admission, admission.reserved if own else 0)
            raise error from None
        if healthy:
            await self._breakers.succeeded(model)
        return response

    async def failure(self, exc: BaseException, model: str, timeout_s: float, caller: Caller) -> tuple[APIError, bool]:
        """The error a failed model call gives its caller, after the breaker heard of it (and,
        where that caller's failures alone reached its threshold, probed the model), and whether
        the model answered that probe: the failure was the request's own."""
        error, failure = classify_failure(exc, model, timeout_s)
        if failure and await self._breakers.failed(model, caller.cache_scope):
            return own_failure(error, model), True
        return error, False

    def succeeded_later(self, model: str) -> None:
        """A finished stream's success, reported off its request's path."""
        asyncio.get_running_loop().create_task(self._breakers.succeeded(model))
