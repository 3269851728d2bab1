"""The request path between parsing and the model (DESIGN.md steps 2-7):

  auth (middleware) -> model access -> rate limit -> response cache -> circuit breaker
  -> the model call (with its timeout) -> breaker report, cache store, token settlement,
  usage, rate-limit headers.

Each step is a small class over the shared state actor (state.py) with a local copy that
keeps the actor off most requests' critical path: key lookups are cached for
`key_cache_ttl_s`, quota is leased in chunks, breaker states and the cache's keys are synced
every 250 ms (every second when idle), usage and settlements are flushed in batches. When the actor is restarting, every step degrades to
its local copy instead of failing the request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import KeyRecord, KeyUsage, digests_equal, hash_key, well_formed
from .breaker import Snapshot, State
from .cache import canonical_key, embedding_key, is_deterministic
from .config import IngressArgs
from .errors import (
    INTERNAL_ERROR_MESSAGE,
    APIError,
    AuthenticationError,
    GatewayTimeoutError,
    InternalServerError,
    ModelNotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    as_api_error,
    error_response,
)
from .http import json_response, sse_response
from .model_directory import ModelDirectory, ModelEntry
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    StreamOptions,
    Usage,
    new_id,
    now,
)
from .ratelimit import Grant, Limits, LocalLease, chunk_for, rate_limit_headers
from .state import StateClient, StateUnavailable

logger = logging.getLogger("ray.serve")

OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/openapi.json"})
ADMIN_PREFIXES = ("/admin", "/status", "/metrics")
MAX_AUTH_HEADER = 512


# ----------------------------------------------------------------------------- callers


@dataclass(frozen=True)
class Caller:
    key_id: str | None
    name: str
    admin: bool
    allowed_models: tuple[str, ...] | None
    limits: Limits | None  # None: not rate limited (auth disabled)

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    @property
    def cache_scope(self) -> str:
        return self.key_id or "anonymous"


ANONYMOUS = Caller(None, "anonymous", True, None, None)


def extract_key(headers: Headers) -> str | None:
    authorization = headers.get("authorization")
    if authorization is not None:
        if len(authorization) > MAX_AUTH_HEADER:
            raise AuthenticationError("The Authorization header is too long.")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Malformed Authorization header; expected 'Authorization: Bearer <key>'.")
        return token.strip()
    api_key = headers.get("x-api-key")
    if api_key is not None:
        if len(api_key) > MAX_AUTH_HEADER:
            raise AuthenticationError("The X-API-Key header is too long.")
        return api_key.strip()
    return None


class Authenticator:
    def __init__(self, state: StateClient, args: IngressArgs, clock: Callable[[], float] = time.monotonic):
        self._state = state
        self._enabled = args.enable_auth
        self._static = args.static_admin_key_sha256
        self._defaults = Limits(args.default_rpm, args.default_tpm)
        self._ttl_s = args.key_cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}

    async def caller(self, headers: Headers) -> Caller:
        if not self._enabled:
            return ANONYMOUS
        key = extract_key(headers)
        if key is None:
            raise AuthenticationError("Missing API key. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
        # Never echo the key: not in errors, not in logs.
        if not well_formed(key):
            raise AuthenticationError("Incorrect API key provided.")
        digest = hash_key(key)
        if self._static and digests_equal(digest, self._static):
            return Caller("static-admin", "admin", True, None, self._defaults)
        record = await self._lookup(digest)
        if record is None:
            raise AuthenticationError("Incorrect API key provided.")
        if not record.active(time.time()):
            raise AuthenticationError("This API key has been revoked or has expired.")
        return Caller(
            record.id,
            record.name,
            record.admin,
            tuple(record.allowed_models) if record.allowed_models is not None else None,
            Limits(record.rpm or self._defaults.rpm, record.tpm or self._defaults.tpm),
        )

    async def _lookup(self, digest: str) -> KeyRecord | None:
        cached = self._cache.get(digest)
        now = self._clock()
        if cached is not None and now - cached[1] < self._ttl_s:
            return cached[0]
        try:
            record = await self._state.call("find_key", digest)
        except StateUnavailable:
            if cached is not None:
                return cached[0]  # a stale answer beats refusing everyone while the state restarts
            raise ServiceUnavailableError(
                "The key store is restarting; retry shortly.", code="state_unavailable", retry_after_s=1
            ) from None
        if len(self._cache) > 10_000:
            self._cache.pop(next(iter(self._cache)))
        self._cache[digest] = (record, now)
        return record


# ----------------------------------------------------------------------------- rate limits


@dataclass
class Admission:
    caller: Caller
    lease_id: int
    reserved: int
    headers: dict[str, str]


class Quota:
    """Leases quota chunks from the state actor and spends them locally."""

    def __init__(self, state: StateClient, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self._state = state
        self._clock = clock
        self._wall = wall
        self._leases: dict[str, LocalLease] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._returns: list[tuple[str, int, int, int]] = []

    async def admit(self, caller: Caller, tokens: int) -> Admission:
        if caller.limits is None or caller.key_id is None:
            return Admission(caller, 0, 0, {})
        key = caller.key_id
        lease = self._leases.get(key)
        if lease is None or not lease.covers(self._clock(), tokens):
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:  # one lease request per key per replica at a time
                lease = self._leases.get(key)
                if lease is None or not lease.covers(self._clock(), tokens):
                    if lease is not None:
                        self._retire(key, lease)
                    lease = LocalLease.of(await self._lease(caller, tokens))
                    self._leases[key] = lease
        lease.take(tokens)
        return Admission(caller, lease.grant.lease_id, tokens, self._headers(lease))

    def settle(self, admission: Admission, actual_tokens: int) -> None:
        """Charge (or refund) the difference between the reservation and the real usage."""
        if admission.lease_id and admission.caller.key_id:
            self._returns.append((admission.caller.key_id, admission.lease_id, 0, admission.reserved - actual_tokens))

    def headers_for(self, caller: Caller) -> dict[str, str]:
        if caller.limits is None or caller.key_id is None:
            return {}
        lease = self._leases.get(caller.key_id)
        if lease is not None:
            return self._headers(lease)
        return rate_limit_headers(caller.limits, caller.limits.rpm, caller.limits.tpm, 0.0, 0.0, self._wall())

    async def flush(self) -> None:
        """Give back what expired leases did not use, and send settlements."""
        now = self._clock()
        for key, lease in list(self._leases.items()):
            if now >= lease.grant.expires_at:
                del self._leases[key]
                self._retire(key, lease)
        if not self._returns:
            return
        returns, self._returns = self._returns, []
        try:
            await self._state.call("give_back", returns)
        except StateUnavailable:
            pass  # that window is forgotten by a restarted actor anyway

    async def _lease(self, caller: Caller, tokens: int) -> Grant:
        limits = caller.limits
        assert limits is not None and caller.key_id is not None
        try:
            grant = await self._state.call(
                "lease", caller.key_id, limits, 1, tokens, chunk_for(limits.rpm), max(tokens, chunk_for(limits.tpm))
            )
        except StateUnavailable:
            # Degrade: admit on a provisional local lease (not charged anywhere) until the
            # actor is back; at most one window's worth of accuracy is lost.
            now = self._clock()
            return Grant(0, 1, tokens, now + 1.0, limits, limits.rpm - 1, max(0, limits.tpm - tokens), 0.0, 0.0)
        if grant.requests == 0:
            kind = "tokens" if grant.remaining_requests >= 1 else "requests"
            if math.isinf(grant.retry_after_s):
                message = f"Request too large: it needs {tokens} tokens but the limit is {limits.tpm} tokens per minute."
                retry = 60.0
            else:
                used = limits.rpm - grant.remaining_requests if kind == "requests" else limits.tpm - grant.remaining_tokens
                limit = limits.rpm if kind == "requests" else limits.tpm
                unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
                message = f"Rate limit reached on {unit}: Limit {limit}, Used {used}, Requested {1 if kind == 'requests' else tokens}."
                retry = max(grant.retry_after_s, 0.001)
            raise RateLimitError(
                message,
                kind=kind,
                retry_after_s=retry,
                headers=rate_limit_headers(limits, grant.remaining_requests, grant.remaining_tokens,
                                           grant.reset_requests_s, grant.reset_tokens_s, self._wall()),
            )
        return grant

    def _retire(self, key: str, lease: LocalLease) -> None:
        if lease.grant.lease_id and (lease.requests_left or lease.tokens_left):
            self._returns.append((key, lease.grant.lease_id, lease.requests_left, lease.tokens_left))

    def _headers(self, lease: LocalLease) -> dict[str, str]:
        grant = lease.grant
        return rate_limit_headers(
            grant.limits,
            grant.remaining_requests + lease.requests_left,
            grant.remaining_tokens + lease.tokens_left,
            grant.reset_requests_s,
            grant.reset_tokens_s,
            self._wall(),
        )


def reservation(body: Any, endpoint: str, default_completion: int) -> int:
    """Tokens reserved at admission: a prompt estimate (about four characters per token) plus
    the completion budget. Settlement corrects it from the real usage."""
    if endpoint == "embed":
        return sum(len(item) // 4 + 2 if isinstance(item, str) else len(item) for item in body.inputs())
    if endpoint == "chat":
        prompts = 1
        prompt = sum(len(m.text()) // 4 + 4 for m in body.messages) + 8
        completion = body.requested_max_tokens or default_completion
    else:
        items = body.prompts()
        prompts = len(items)
        prompt = sum(len(p) // 4 + 1 if isinstance(p, str) else len(p) for p in items)
        completion = body.max_tokens or default_completion
    return prompt + completion * body.n * prompts


# ----------------------------------------------------------------------------- cache, breakers, usage


class CacheClient:
    """The replica's side of the shared response cache.

    It knows which keys the shared cache holds (synced every 250 ms as key changes), so a
    miss costs no call to the state actor; and it keeps its own small LRU of values, so a
    repeated hit costs none either. Cached responses never change under their key (the key
    includes the model's load revision), so a copy is as good as the original until its TTL.
    """

    def __init__(self, state: StateClient, args: IngressArgs, clock: Callable[[], float] = time.monotonic):
        self._state = state
        self.enabled = args.enable_caching
        self._global = args.cache_scope == "global"
        self._ttl_s = args.cache_ttl_seconds
        self._clock = clock
        self._max_entries = min(args.cache_max_size, 1000)
        self._max_bytes = min(args.cache_max_bytes, 16 * 1024 * 1024)
        self._local: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (value, expires_at)
        self._local_bytes = 0
        self._pending: list[tuple[str, bytes, str]] = []
        self.known: set[str] = set()
        self.version = -1
        self.local_hits = 0
        self.local_misses = 0  # misses answered here, without asking the actor

    def scope(self, caller: Caller) -> str:
        return "global" if self._global else caller.cache_scope

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(keys)
        remote = []
        for i, key in enumerate(keys):
            value = self._local_get(key)
            if value is not None:
                out[i] = value
                self.local_hits += 1
            elif key in self.known:
                remote.append(i)
            else:
                self.local_misses += 1
        if remote:
            try:
                found = await self._state.call("cache_get", [keys[i] for i in remote], timeout_s=0.5)
            except StateUnavailable:
                found = [None] * len(remote)
            for i, item in zip(remote, found, strict=True):
                if item is not None:
                    out[i] = item[0]
                    self._local_put(keys[i], item[0], item[1])
        return out

    def put(self, key: str, value: bytes, model: str) -> None:
        self._pending.append((key, value, model))
        self._local_put(key, value, self._ttl_s)
        self.known.add(key)

    def apply(self, changes) -> None:
        if not changes.complete:
            self.known = set(changes.added)
        else:
            self.known.update(changes.added)
            self.known.difference_update(changes.removed)
        self.version = changes.version

    def take_local_counts(self) -> tuple[int, int]:
        counts = (self.local_hits, self.local_misses)
        self.local_hits = self.local_misses = 0
        return counts

    async def flush(self) -> None:
        if self._pending:
            items, self._pending = self._pending, []
            with contextlib.suppress(StateUnavailable):
                await self._state.call("cache_put", items)

    def _local_get(self, key: str) -> bytes | None:
        item = self._local.get(key)
        if item is None:
            return None
        if self._clock() >= item[1]:
            self._local_drop(key)
            return None
        self._local.move_to_end(key)
        return item[0]

    def _local_put(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self._max_bytes or ttl_s <= 0:
            return
        if key in self._local:
            self._local_drop(key)
        self._local[key] = (value, self._clock() + ttl_s)
        self._local_bytes += len(value)
        while len(self._local) > self._max_entries or self._local_bytes > self._max_bytes:
            self._local_drop(next(iter(self._local)))

    def _local_drop(self, key: str) -> None:
        value, _ = self._local.pop(key)
        self._local_bytes -= len(value)


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


class UsageRecorder:
    def __init__(self, state: StateClient):
        self._state = state
        self._pending: dict[str, KeyUsage] = {}

    def record(self, caller: Caller, prompt_tokens: int, completion_tokens: int) -> None:
        if caller.key_id is None or caller.key_id == "static-admin":
            return
        usage = self._pending.setdefault(caller.key_id, KeyUsage())
        usage.requests += 1
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        usage.last_used_at = time.time()

    async def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, {}
            try:
                await self._state.call("add_usage", pending)
            except StateUnavailable:
                for key, usage in pending.items():  # keep it for the next flush
                    mine = self._pending.setdefault(key, KeyUsage())
                    mine.requests += usage.requests
                    mine.prompt_tokens += usage.prompt_tokens
                    mine.completion_tokens += usage.completion_tokens
                    mine.last_used_at = max(mine.last_used_at or 0, usage.last_used_at or 0)


# ----------------------------------------------------------------------------- failures


def classify(exc: BaseException, model: str, timeout_s: float) -> tuple[APIError, bool]:
    """(the error to return, whether it counts as a model failure for the breaker)."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return GatewayTimeoutError(f"The model '{model}' did not answer within {timeout_s:g}s."), True
    api_error = as_api_error(exc)
    if api_error is not None:
        return api_error, api_error.status_code >= 500
    from ray import exceptions as ray_exceptions
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, BackPressureError):
        return ServiceUnavailableError(
            f"The model '{model}' has too many queued requests; retry shortly.", code="model_overloaded", retry_after_s=1
        ), False
    if isinstance(exc, ray_exceptions.RayActorError | ray_exceptions.ActorUnavailableError):
        return ServiceUnavailableError(
            f"The model '{model}' replica is unavailable; retry shortly.", code="model_unavailable", retry_after_s=2
        ), True
    logger.error("model call to %s failed", model, exc_info=exc)
    return InternalServerError(INTERNAL_ERROR_MESSAGE), True


# ----------------------------------------------------------------------------- the gateway


@dataclass
class _StreamTotals:
    texts: dict[int, str] = field(default_factory=dict)
    finishes: dict[int, str] = field(default_factory=dict)
    usage: Usage | None = None


class Gateway:
    def __init__(self, args: IngressArgs, state: StateClient, directory: ModelDirectory):
        self.args = args
        self.state = state
        self.directory = directory
        self.authenticator = Authenticator(state, args)
        self.quota = Quota(state)
        self.cache = CacheClient(state, args)
        self.breakers = Breakers(state, args.enable_circuit_breaker)
        self.usage = UsageRecorder(state)
        self._background: list[asyncio.Task] = []
        self._last_request = float("-inf")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._every(self._sync_period, self.sync)),
            loop.create_task(self._every(0.25, self.quota.flush)),
            loop.create_task(self._every(0.25, self.cache.flush)),
            loop.create_task(self._every(1.0, self.usage.flush)),
        ]

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for flush in (self.quota.flush, self.cache.flush, self.usage.flush):
            with contextlib.suppress(Exception):
                await flush()

    async def sync(self) -> None:
        """Breaker states and the cache's key changes, in one call to the state actor."""
        try:
            result = await self.state.call("sync", self.cache.version, *self.cache.take_local_counts(), timeout_s=0.5)
        except StateUnavailable:
            return
        self.breakers.snapshots = result["breakers"]
        self.cache.apply(result["cache"])

    def _sync_period(self) -> float:
        # 250 ms while requests flow (breakers and cache keys stay fresh); once a second when
        # idle, so an idle server leaves the cores to others.
        return 0.25 if time.monotonic() - self._last_request < 5.0 else 1.0

    @staticmethod
    async def _every(period_s: float | Callable[[], float], job) -> None:
        while True:
            try:
                await job()
            except Exception:  # noqa: BLE001 - a background job must not die
                logger.exception("gateway background job failed")
            await asyncio.sleep(period_s() if callable(period_s) else period_s)

    # ------------------------------------------------------------------ model access

    async def model(self, caller: Caller, model: str, endpoint: str) -> ModelEntry:
        self._last_request = time.monotonic()
        if not caller.may_use(model):
            raise ModelNotFoundError(model)
        try:
            return await self.directory.entry_for(model, endpoint)
        except ServiceUnavailableError:
            if self.directory.status_of(model) == "unavailable":
                # Serve saw the replica die (or it stopped answering): a failure for the
                # breaker, as a failed call would have been. A model still loading is not.
                await self.breakers.report(model, ok=False)
            self.breakers.raise_if_open(model)  # the breaker's answer says how long to wait
            raise

    def model_status(self, entry_status: str, model: str) -> str:
        return self.breakers.status_of(model) or entry_status

    # ------------------------------------------------------------------ generation

    async def generate(self, request_headers: Headers, caller: Caller, body: ChatCompletionRequest | CompletionRequest,
                       endpoint: str, state: dict[str, Any]) -> Response:
        entry = await self.model(caller, body.model, endpoint)
        assert entry.client is not None and entry.info is not None
        admission = await self.quota.admit(caller, reservation(body, endpoint, self.args.default_token_reservation))
        state["ratelimit_headers"] = admission.headers
        cache_key = None
        if self.cache.enabled and is_deterministic(body.model_dump(include={"temperature", "seed", "n"})):
            cache_key = canonical_key(endpoint, body.model_dump(mode="json"), entry.info.revision, self.cache.scope(caller))
            if not _no_cache(request_headers):
                (hit,) = await self.cache.get_many([cache_key])
                if hit is not None:
                    self.quota.settle(admission, 0)  # a hit burns no compute: refund the tokens
                    usage = json.loads(hit).get("usage") or {}
                    self.usage.record(caller, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
                    return await _replay(hit, body, endpoint)
        try:
            await self.breakers.admit(body.model)
        except APIError:
            self.quota.settle(admission, 0)
            raise
        headers = {"x-cache": "MISS"} if cache_key else {}
        timeout = entry.info.request_timeout_s
        if body.stream:
            return await self._stream(entry, body, endpoint, caller, admission, cache_key, headers, timeout)
        call = entry.client.chat(body) if endpoint == "chat" else entry.client.complete(body)
        response = await self._call_model(call, body.model, timeout, admission)
        self.quota.settle(admission, response.usage.total_tokens)
        self.usage.record(caller, response.usage.prompt_tokens, response.usage.completion_tokens)
        payload = response.model_dump_json()
        if cache_key:
            self.cache.put(cache_key, payload.encode(), body.model)
        return Response(payload, media_type="application/json", headers=headers)

    async def _call_model(self, call, model: str, timeout: float, admission: Admission):
        """A whole (non-streaming) model call: its timeout, the breaker report, and on failure
        the refund of the reserved tokens and the error the client gets."""
        try:
            response = await asyncio.wait_for(call, timeout)
        except BaseException as exc:
            self.quota.settle(admission, 0)
            if isinstance(exc, asyncio.CancelledError):
                raise
            error, failure = classify(exc, model, timeout)
            if failure:
                await self.breakers.report(model, ok=False)
            raise error from None
        await self.breakers.report(model, ok=True)
        return response

    async def _stream(self, entry: ModelEntry, body, endpoint: str, caller: Caller, admission: Admission,
                      cache_key: str | None, headers: dict[str, str], timeout: float) -> Response:
        client_options = body.stream_options or StreamOptions()
        # Ask for usage on every chunk: it settles the tokens of streams a client aborts.
        internal = body.model_copy(update={"stream_options": StreamOptions(include_usage=True, continuous_usage_stats=True)})
        upstream = entry.client.chat_stream(internal) if endpoint == "chat" else entry.client.complete_stream(internal)
        totals = _StreamTotals()
        model = body.model
        gateway = self

        async def bookkept() -> AsyncIterator[Any]:
            outcome = "aborted"
            try:
                async for chunk in _trimmed_chunks(upstream, endpoint, timeout, client_options, totals):
                    yield chunk
                outcome = "done"
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError | GeneratorExit):
                    error, failure = classify(exc, model, timeout)
                    outcome = "failed" if failure else "client_error"
                    raise error from None
                raise
            finally:
                usage = totals.usage
                gateway.quota.settle(admission, usage.total_tokens if usage else 0)
                if usage:
                    gateway.usage.record(caller, usage.prompt_tokens, usage.completion_tokens)
                if outcome == "done":
                    asyncio.get_running_loop().create_task(gateway.breakers.report(model, ok=True))
                    if cache_key and usage:
                        gateway.cache.put(cache_key, _assemble(body, endpoint, totals).encode(), model)
                elif outcome == "failed":
                    asyncio.get_running_loop().create_task(gateway.breakers.report(model, ok=False))

        # Errors before the first chunk propagate from here as real status codes.
        response = await sse_response(_Cancellable(bookkept(), upstream.cancel))
        response.headers.update(headers)
        return response

    # ------------------------------------------------------------------ embeddings

    async def embed(self, request_headers: Headers, caller: Caller, body: EmbeddingRequest, state: dict[str, Any]) -> Response:
        entry = await self.model(caller, body.model, "embed")
        assert entry.client is not None and entry.info is not None
        admission = await self.quota.admit(caller, reservation(body, "embed", 0))
        state["ratelimit_headers"] = admission.headers
        inputs = body.inputs()
        scope = self.cache.scope(caller)
        keys = [
            embedding_key(entry.info.revision, scope, body.dimensions, item) if isinstance(item, str) and self.cache.enabled else None
            for item in inputs
        ]
        lookup = [k for k in keys if k is not None]
        found: dict[str, bytes] = {}
        if lookup and not _no_cache(request_headers):
            for key, value in zip(lookup, await self.cache.get_many(lookup), strict=True):
                if value is not None:
                    found[key] = value
        missing = [i for i, key in enumerate(keys) if key is None or key not in found]
        vectors: list[np.ndarray | None] = [None] * len(inputs)
        tokens: list[int] = [0] * len(inputs)
        for i, key in enumerate(keys):
            if key is not None and key in found:
                tokens[i], vectors[i] = _unpack_vector(found[key])
        computed_tokens = 0
        if missing:
            try:
                await self.breakers.admit(body.model)
            except APIError:
                self.quota.settle(admission, 0)
                raise
            sub = body.model_copy(update={"input": [inputs[i] for i in missing], "encoding_format": "base64"})
            response = await self._call_model(entry.client.embed(sub), body.model, entry.info.request_timeout_s, admission)
            per_input = response.usage.input_tokens or [0] * len(missing)
            for i, data, count in zip(missing, response.data, per_input, strict=True):
                vector = np.frombuffer(base64.b64decode(data.embedding), dtype="<f4")
                vectors[i], tokens[i] = vector, count
                if keys[i] is not None:
                    self.cache.put(keys[i], _pack_vector(count, vector), body.model)
            computed_tokens = response.usage.prompt_tokens
        self.quota.settle(admission, computed_tokens)
        total = sum(tokens)
        self.usage.record(caller, total, 0)
        result = EmbeddingResponse(
            data=[
                EmbeddingData(index=i, embedding=_format_vector(vector, body.encoding_format))
                for i, vector in enumerate(vectors)
            ],
            model=body.model,
            usage=EmbeddingUsage(prompt_tokens=total, total_tokens=total),
        )
        headers = {"x-cache": "MISS" if missing else "HIT"} if self.cache.enabled else {}
        return json_response(result, headers=headers)


async def _trimmed_chunks(upstream, endpoint: str, timeout: float, wanted: StreamOptions, totals: _StreamTotals) -> AsyncIterator[Any]:
    """The model's chunks, bookkept into `totals` and trimmed to what the client asked for
    (the gateway always asks the model for usage on every chunk)."""
    iterator = upstream.__aiter__()
    while True:
        try:
            async with asyncio.timeout(timeout):  # per chunk; no task per call, unlike wait_for
                chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return
        if chunk.usage is not None:
            totals.usage = chunk.usage
        for choice in chunk.choices:
            text = choice.delta.content if endpoint == "chat" else choice.text
            totals.texts[choice.index] = totals.texts.get(choice.index, "") + (text or "")
            if choice.finish_reason:
                totals.finishes[choice.index] = choice.finish_reason
        if not chunk.choices:  # the usage-only chunk
            if wanted.include_usage:
                yield chunk
            continue
        yield chunk if wanted.continuous_usage_stats else chunk.model_copy(update={"usage": None})


class _Cancellable:
    """An async iterator with the .cancel() sse_response calls when the client leaves."""

    def __init__(self, iterator, cancel: Callable[[], None]):
        self._iterator = iterator
        self.cancel = cancel

    def __aiter__(self):
        return self._iterator


def _no_cache(headers: Headers) -> bool:
    return "no-cache" in headers.get("cache-control", "").lower()


def _pack_vector(tokens: int, vector: np.ndarray) -> bytes:
    return int(tokens).to_bytes(4, "little") + vector.astype("<f4").tobytes()


def _unpack_vector(value: bytes) -> tuple[int, np.ndarray]:
    return int.from_bytes(value[:4], "little"), np.frombuffer(value[4:], dtype="<f4")


def _format_vector(vector: np.ndarray | None, encoding_format: str) -> list[float] | str:
    assert vector is not None
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _assemble(body, endpoint: str, totals: _StreamTotals) -> str:
    """The non-streaming response a finished stream amounts to (what the cache stores)."""
    usage = totals.usage or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    indices = sorted(totals.texts)
    if endpoint == "chat":
        return ChatCompletionResponse(
            id=new_id("chatcmpl"), created=now(), model=body.model,
            choices=[ChatChoice(index=i, message=ChatMessageOut(content=totals.texts[i]),
                                finish_reason=totals.finishes.get(i, "stop")) for i in indices],  # type: ignore[arg-type]
            usage=usage,
        ).model_dump_json()
    return CompletionResponse(
        id=new_id("cmpl"), created=now(), model=body.model,
        choices=[CompletionChoice(index=i, text=totals.texts[i], finish_reason=totals.finishes.get(i, "stop")) for i in indices],  # type: ignore[arg-type]
        usage=usage,
    ).model_dump_json()


async def _replay(cached: bytes, body, endpoint: str) -> Response:
    """A cache hit: the stored response with a fresh id, or its SSE replay for stream=true."""
    stored = json.loads(cached)
    stored["id"] = new_id("chatcmpl" if endpoint == "chat" else "cmpl")
    stored["created"] = now()
    headers = {"x-cache": "HIT"}
    if not body.stream:
        return Response(json.dumps(stored), media_type="application/json", headers=headers)
    options = body.stream_options or StreamOptions()
    usage = Usage(**stored["usage"])

    async def chunks() -> AsyncIterator[Any]:
        for choice in stored["choices"]:
            if endpoint == "chat":
                base = dict(id=stored["id"], created=stored["created"], model=stored["model"])
                yield ChatCompletionChunk(**base, choices=[ChatChunkChoice(index=choice["index"], delta=ChatDelta(role="assistant", content=""))])
                yield ChatCompletionChunk(**base, choices=[ChatChunkChoice(index=choice["index"], delta=ChatDelta(content=choice["message"]["content"]))])
                yield ChatCompletionChunk(**base, choices=[ChatChunkChoice(index=choice["index"], delta=ChatDelta(), finish_reason=choice["finish_reason"])],
                                          usage=usage if options.continuous_usage_stats else None)
            else:
                yield CompletionResponse(id=stored["id"], created=stored["created"], model=stored["model"],
                                         choices=[CompletionChoice(index=choice["index"], text=choice["text"], finish_reason=choice["finish_reason"])])
        if options.include_usage:
            cls = ChatCompletionChunk if endpoint == "chat" else CompletionResponse
            yield cls(id=stored["id"], created=stored["created"], model=stored["model"], choices=[], usage=usage)

    response = await sse_response(chunks())
    response.headers.update(headers)
    return response


# ----------------------------------------------------------------------------- middleware


class GatewayMiddleware:
    """Authenticates every request except /health and /ready, keeps /admin, /status and
    /metrics to admin keys, and adds the rate-limit headers to every authenticated response."""

    def __init__(self, app: ASGIApp, gateway: Gateway):
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path in OPEN_PATHS or (path == "/metrics" and self.gateway.args.public_metrics):
            await self.app(scope, receive, send)
            return
        try:
            caller = await self.gateway.authenticator.caller(Headers(scope=scope))
            if path.startswith(ADMIN_PREFIXES) and not caller.admin:
                raise PermissionDeniedError(f"{path} needs an admin API key.")
        except APIError as error:
            await error_response(error)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["caller"] = caller
        quota = self.gateway.quota

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                extra = state.get("ratelimit_headers") or quota.headers_for(caller)
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name.lower().encode(), value.encode()) for name, value in extra.items() if name.lower().encode() not in present
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
