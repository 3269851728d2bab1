"""Model fallbacks (a model's `fallbacks`, `context_fallbacks`, `fallback_after_s` args, named as
LiteLLM names them): the models tried in order when the one a request names cannot serve it,
before any of its answer exists: its breaker is open, its queue is full, it has no ready
replica, it is scaled to zero and did not start within fallback_after_s (then, when no fallback
serves, the request waits for it after all), or (context_fallbacks) the request is longer than
its context. A stream's first chunk is awaited here, so a refusal that comes with it still
falls back; once a chunk is out nothing is retried. Each fallback goes through `Gateway.model`
(a key gets only those it may use); a fallback's own fallbacks are not followed; when none
serves, the client gets the first model's error. The answer says `x-hfserve-fallback: <asked>`;
the access log, metrics and usage count the model that served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from contract.errors import (
    APIError,
    CircuitOpenError,
    ContextLengthExceededError,
    ModelOverloadedError,
    ModelStartingError,
    ServiceUnavailableError,
)
from serve_app.ingress.gateway import request_record
from serve_app.ingress.gateway.breaker_gate import Breakers
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.gateway.reply import ChunkStream, Reply
from serve_app.ingress.model_directory import ModelDirectory, ModelEntry

R = TypeVar("R", bound=BaseModel)  # a request: every one names its model


class ModelGate(Protocol):
    """Gateway.model: access, then the model's directory entry."""

    def __call__(self, caller: Caller, model: str, endpoint: str, via_alias: str | None = None, *,
                 wake_wait_s: float | None = None) -> Awaitable[ModelEntry]: ...


@dataclass(frozen=True)
class Policy:
    fallbacks: tuple[str, ...] = ()
    context_fallbacks: tuple[str, ...] = ()
    after_s: float | None = None

    @classmethod
    def of(cls, args: Mapping[str, Any] | BaseModel) -> Policy:
        """From a model's args (a dict as deployed or recorded) or its ModelInfo."""
        get = args.get if isinstance(args, Mapping) else lambda name, default=None: getattr(args, name, default)
        return cls(tuple(get("fallbacks") or ()), tuple(get("context_fallbacks") or ()), get("fallback_after_s"))

    def candidates(self, reason: str) -> tuple[str, ...]:
        return self.context_fallbacks if reason == "context_length" else self.fallbacks


class CannotServe(Exception):
    def __init__(self, reason: str, error: APIError):
        super().__init__(reason)
        self.reason = reason
        self.error = error


def refusal_reason(error: APIError) -> str | None:
    """Why a model refused a call it never ran (None: another error, the client's to see)."""
    if isinstance(error, CircuitOpenError):
        return "circuit_open"
    if isinstance(error, ModelOverloadedError):
        return "overloaded"
    if isinstance(error, ContextLengthExceededError):
        return "context_length"
    return None


def unready_reason(error: APIError) -> str | None:
    """Why the directory has no ready replica to give (None: the model is not for this request)."""
    if isinstance(error, ModelStartingError):
        return "cold_start"
    if isinstance(error, CircuitOpenError):
        return "circuit_open"
    return "unavailable" if isinstance(error, ServiceUnavailableError) else None


class Fallbacks:
    def __init__(self, directory: ModelDirectory, breakers: Breakers, model: ModelGate):
        self._directory = directory
        self._breakers = breakers
        self._model = model

    async def policy(self, model: str) -> Policy:
        """The model's fallbacks: as its replica reports them, or its run-time record, or (a
        config-file model not heard from yet, say scaled to zero) its deployed args."""
        declared = await self._directory.declared(model)
        return Policy.of(declared) if declared is not None else Policy()

    async def serve(self, caller: Caller, request: R, endpoint: str, alias: str | None,
                    attempt: Callable[[ModelEntry, R], Awaitable[Reply]]) -> Reply:
        """The reply of the model the request names, or of its first fallback that serves it."""
        asked = request.model
        policy = await self.policy(asked)
        if not policy.fallbacks and not policy.context_fallbacks:  # the common case, as without fallbacks
            return await attempt(await self._model(caller, asked, endpoint, alias), request)
        wait_s = policy.after_s if policy.fallbacks else None
        try:
            return await self._attempt(caller, request, endpoint, alias, attempt, wait_s)
        except CannotServe as refused:
            reason, error = refused.reason, refused.error
            if not policy.candidates(reason):
                raise error from None
        record = request_record.current()
        asked_model = record.model if record is not None else ""
        tried = {asked}
        for name in policy.candidates(reason):
            if name in tried or (reason == "cold_start" and self._directory.status_of(name) == "idle"):
                continue  # a fallback that would start from zero as well is no quicker
            tried.add(name)
            try:
                reply = await self._attempt(caller, request.model_copy(update={"model": name}), endpoint, None,
                                            attempt, None)
            except (CannotServe, APIError):
                continue  # not this one (refused, not the key's, or it failed): the next
            reply.fallback_from = alias or asked  # the name the client sent: an alias's model stays unnamed
            if record is not None:
                record.fallback_from, record.fallback_reason = asked, reason
            return reply
        if record is not None:
            record.model = asked_model  # none served: the error is the model asked for
        if reason == "cold_start":  # no fallback serves now: wait for the model's start after all
            try:
                return await self._attempt(caller, request, endpoint, alias, attempt, None)
            except CannotServe as refused:
                raise refused.error from None
        raise error

    async def _attempt(self, caller: Caller, request: R, endpoint: str, alias: str | None,
                       attempt: Callable[[ModelEntry, R], Awaitable[Reply]], wake_wait_s: float | None) -> Reply:
        """The model's reply, its stream's first chunk received; CannotServe when it refused."""
        model = request.model
        try:
            entry = await self._model(caller, model, endpoint, alias, wake_wait_s=wake_wait_s)
        except APIError as error:
            reason = unready_reason(error)
            if reason is None:
                raise
            raise CannotServe(reason, error) from None
        try:
            # Open by this replica's copy: refused before the quota and the cache are asked.
            self._breakers.raise_if_open(model)
            reply = await attempt(entry, request)
            if isinstance(reply.result, ChunkStream):
                reply.result = await reply.result.started()
        except APIError as error:
            reason = refusal_reason(error)
            if reason is None:
                raise
            raise CannotServe(reason, error) from None
        return reply

