"""Circuit breakers on the replica's side: a copy of every model's breaker, synced from the
state actor, that rejects requests to an open model without a call. Failures are reported at
once with their caller, successes only when there is something to reset. When a breaker wants
a probe (HALF_OPEN, or one caller's failures alone at the threshold), one ingress claims it from
the actor and sends the model a small request of its own: one caller's requests cannot open a
model's breaker for everybody while the model answers that probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from contract.embedding_protocol import EmbeddingRequest
from contract.endpoints import CHAT, CLASSIFY, COMPLETE, DETOKENIZE, EMBED, RERANK, TOKENIZE
from contract.errors import CircuitOpenError
from contract.protocol import ChatCompletionRequest, CompletionRequest
from contract.scoring_protocol import ClassificationRequest, RerankRequest
from contract.tokenize_protocol import DetokenizeRequest, TokenizeRequest
from serve_app.ingress.gateway.failures import classify_failure, is_cancellation
from serve_app.ingress.model_directory import ModelDirectory
from serve_app.state.circuit_breaker import Snapshot, State
from serve_app.state.client import StateClient, StateUnavailable

logger = logging.getLogger("ray.serve")

PROBE_TEXT = "ping"


def probe_request(model: str, endpoints: list[str]) -> tuple[str, Any] | None:
    """(handle method, request): the cheapest request the model serves, one short input and at
    most one token. Completions before chat: a model without a chat template still completes."""
    requests = {
        EMBED.name: lambda: EmbeddingRequest(model=model, input=PROBE_TEXT, encoding_format="base64"),
        CLASSIFY.name: lambda: ClassificationRequest(model=model, input=PROBE_TEXT),
        RERANK.name: lambda: RerankRequest(model=model, query=PROBE_TEXT, documents=[PROBE_TEXT]),
        COMPLETE.name: lambda: CompletionRequest(model=model, prompt=PROBE_TEXT, max_tokens=1, temperature=0),
        CHAT.name: lambda: ChatCompletionRequest(model=model, messages=[{"role": "user", "content": PROBE_TEXT}],
                                                 max_tokens=1, temperature=0),
        # Last: a tokenizer that answers says little of the model's engine.
        TOKENIZE.name: lambda: TokenizeRequest(model=model, prompt=PROBE_TEXT),
        DETOKENIZE.name: lambda: DetokenizeRequest(model=model, tokens=[0]),
    }
    for endpoint in (EMBED, CLASSIFY, RERANK, COMPLETE, CHAT, TOKENIZE, DETOKENIZE):
        if endpoint.name in endpoints:
            return endpoint.method, requests[endpoint.name]()
    return None


class Breakers:
    def __init__(self, state: StateClient, enabled: bool, directory: ModelDirectory,
                 clock: Callable[[], float] = time.monotonic):
        self._state = state
        self.enabled = enabled
        self._directory = directory
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        # When each copy arrived: an OPEN copy's time left counts down here, so a replica that
        # cannot reach the state actor (a slow sync) does not keep a model shut after its time.
        self._received: dict[str, float] = {}
        self._probes: dict[str, asyncio.Future] = {}  # the probe this replica runs, per model

    @property
    def snapshots(self) -> Mapping[str, Snapshot]:
        return self._snapshots

    def replace_all(self, snapshots: Mapping[str, Snapshot]) -> None:
        now = self._clock()
        self._snapshots = dict(snapshots)
        self._received = dict.fromkeys(snapshots, now)

    def _keep(self, model: str, snapshot: Snapshot) -> None:
        self._snapshots[model] = snapshot
        self._received[model] = self._clock()

    def open_left_s(self, model: str) -> float:
        """Seconds the model's breaker stays open by this replica's copy (0 when it is not)."""
        snapshot = self._snapshots.get(model)
        if snapshot is None or snapshot.state is not State.OPEN:
            return 0.0
        return max(0.0, snapshot.retry_after_s - (self._clock() - self._received[model]))

    def raise_if_open(self, model: str) -> None:
        left = self.open_left_s(model)
        if self.enabled and left > 0:
            raise CircuitOpenError(
                f"The model '{model}' is failing; its circuit breaker is open.",
                retry_after_s=max(1, math.ceil(left)),
            )

    async def admit(self, model: str) -> None:
        snapshot = self.snapshots.get(model)
        if not self.enabled or snapshot is None or snapshot.state is State.CLOSED:
            return
        self.raise_if_open(model)
        # HALF_OPEN (or OPEN whose time is up): one probe of our own, across every replica, then
        # this request if it answered. A caller's own request as the probe would let one caller
        # keep the breaker open with requests that fail by themselves.
        try:
            verdict = await self._probe(model)
        except StateUnavailable:
            return  # no one to arbitrate the probe: the request goes on, as if it answered
        if verdict is True or self.snapshots[model].state is State.CLOSED:  # or another's probe closed it
            return
        self.raise_if_open(model)
        raise CircuitOpenError(f"The model '{model}' is recovering; retry shortly.", retry_after_s=1)

    async def succeeded(self, model: str) -> None:
        snapshot = self.snapshots.get(model)
        if not self.enabled or snapshot is None or (snapshot.state is State.CLOSED and snapshot.consecutive_failures == 0):
            return  # nothing to reset: successes cost no call to the actor
        with contextlib.suppress(StateUnavailable):
            self._keep(model, await self._state.breaker_report(model, True))

    async def failed(self, model: str, caller: str | None) -> bool:
        """Report a failed call of `caller` (None: no request caused it). True when the failure
        made a probe due, this replica ran it and the model answered: the failure was the
        request's own, and the breaker stays closed."""
        if not self.enabled:
            return False
        try:
            snapshot = await self._state.breaker_report(model, False, caller)
            self._keep(model, snapshot)
            return snapshot.probe_due and await self._probe(model) is True
        except StateUnavailable:
            return False

    async def _probe(self, model: str) -> bool | None:
        """Claim the model's probe and run it: True (it answered), False (it failed: the breaker
        is open now), None (another replica probes, or the model was too busy to tell). Raises
        StateUnavailable when the actor cannot be asked for the claim."""
        running = self._probes.get(model)
        if running is None:
            claimed, snapshot = await self._state.breaker_probe(model)
            self._keep(model, snapshot)
            if not claimed:
                return None
            # Shielded from the request that started it, and outside its context (Serve cancels
            # the model calls made in a request's context when its client leaves): a client that
            # disconnects must not leave the claim unanswered, nor make it a verdict of failure.
            probe = asyncio.get_running_loop().create_task(self._run_probe(model), context=contextvars.Context())
            running = self._probes[model] = probe
            running.add_done_callback(lambda _: self._probes.pop(model, None))
        return await asyncio.shield(running)

    async def _run_probe(self, model: str) -> bool | None:
        verdict = await self._probe_verdict(model)
        logger.warning("circuit breaker probe of %s: %s", model,
                       {True: "it answers", False: "it fails", None: "no verdict"}[verdict])
        with contextlib.suppress(StateUnavailable):
            self._keep(model, await self._state.breaker_probed(model, verdict))
        return verdict

    async def _probe_verdict(self, model: str) -> bool | None:
        entry = next((e for e in self._directory.entries() if e.id == model), None)
        if entry is None or entry.client is None or entry.info is None:
            return None
        probe = probe_request(model, entry.info.endpoints)
        if probe is None:
            return None
        method, request = probe
        timeout = entry.info.request_timeout_s
        try:
            await entry.client.call_with_progress(method, request, timeout)
        except BaseException as exc:  # noqa: BLE001 - whatever failed, classify says whose fault it is
            if is_cancellation(exc):
                raise asyncio.CancelledError from None
            error, failure = classify_failure(exc, model, timeout)
            if failure:
                return False
            # A full queue says nothing of the model's health; a 4xx to our own request neither,
            # but it should not happen: it is logged as an error.
            level = logging.ERROR if error.status_code < 500 else logging.INFO
            logger.log(level, "circuit breaker probe of %s gave no verdict: %s", model, error.message)
            return None
        return True

    def status_of(self, model: str) -> str | None:
        snapshot = self.snapshots.get(model)
        if snapshot is None or snapshot.state is State.CLOSED:
            return None
        return "circuit_open" if snapshot.state is State.OPEN else "circuit_half_open"
