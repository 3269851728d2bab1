"""Rate limits on the replica's side: quota leased in chunks from the state actor and spent
locally, token reservations settled from the real usage, and the rate-limit headers.

The authoritative sliding windows live in the state actor (state/rate_limiter.py RateLimiter); a lease is
charged there when granted and what it did not use is given back when it expires, so every
replica together never admits more than a key's limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from contract.errors import InvalidRequestError, RateLimitError
from serve_app.ingress.gateway.callers import Caller
from serve_app.state.client import StateClient, StateUnavailable
from serve_app.state.rate_limiter import (
    Grant,
    LocalLease,
    chunk_for,
    format_duration,
    rate_limit_headers,
)


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

    async def admit(self, caller: Caller, tokens: int, too_large_param: str | None = None) -> Admission:
        """Admit a request reserving `tokens`, or raise the 429 that says when to retry. A
        request over the key's whole TPM could never pass: that is a 400 naming
        `too_large_param`, not a 429."""
        if caller.limits is None or caller.key_id is None:
            return Admission(caller, 0, 0, {})
        for scope_id, limits in caller.limits.scopes(caller.key_id):
            whose = "this API key's" if scope_id == caller.key_id else "its team's"
            if tokens > limits.tpm:
                raise _too_large(tokens, limits.tpm, too_large_param, whose=whose)
            if limits.budget_tokens is not None and tokens > limits.budget_tokens:
                raise _too_large(tokens, limits.budget_tokens, too_large_param,
                                 f"token budget per {limits.budget_period}", whose)
        key, now = caller.key_id, self._clock()
        lease = self._leases.get(key)
        if lease is None or not lease.covers(now, tokens, caller.limits):
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:  # one lease request per key per replica at a time
                lease = self._leases.get(key)
                if lease is None or not lease.covers(self._clock(), tokens, caller.limits):
                    if lease is not None:
                        self._retire(key, lease)
                    lease = LocalLease.of(await self._lease(caller, tokens), self._clock())
                    self._leases[key] = lease
        lease.take(tokens)
        return Admission(caller, lease.grant.lease_id, tokens, self._headers(lease))

    def settle(self, admission: Admission, actual_tokens: int) -> None:
        """Charge (or refund) the difference between the reservation and the real usage."""
        if admission.lease_id and admission.caller.key_id:
            self._returns.append((admission.caller.key_id, admission.lease_id, 0, admission.reserved - actual_tokens))

    def refund(self, admission: Admission) -> None:
        """Give back a whole admission, its request too: the model refused a call it never ran
        (its breaker, its full queue), so a retry or a fallback is not a second charge."""
        key = admission.caller.key_id
        if not admission.lease_id or key is None:
            return
        lease = self._leases.get(key)
        if lease is not None and lease.grant.lease_id == admission.lease_id and self._clock() < lease.expires_at:
            lease.give(admission.reserved)
        else:
            self._returns.append((key, admission.lease_id, 1, admission.reserved))

    def headers_for(self, caller: Caller) -> dict[str, str]:
        if caller.limits is None or caller.key_id is None:
            return {}
        lease = self._leases.get(caller.key_id)
        if lease is not None:
            return self._headers(lease)
        limits = caller.limits.effective()
        return rate_limit_headers(limits, limits.rpm, limits.tpm, 0.0, 0.0, self._wall())

    async def flush(self) -> None:
        """Give back what expired leases did not use, and send settlements."""
        now = self._clock()
        for key, lease in list(self._leases.items()):
            if now >= lease.expires_at:
                del self._leases[key]
                self._retire(key, lease)
        if not self._returns:
            return
        returns, self._returns = self._returns, []
        try:
            await self._state.give_back(returns)
        except StateUnavailable:
            pass  # that window is forgotten by a restarted actor anyway

    async def _lease(self, caller: Caller, tokens: int) -> Grant:
        limits = caller.limits
        assert limits is not None and caller.key_id is not None
        strictest = limits.effective()  # chunks small against a team's limit too: its keys share it
        try:
            grant = await self._state.lease(
                caller.key_id, limits, 1, tokens, chunk_for(strictest.rpm), max(tokens, chunk_for(strictest.tpm))
            )
        except StateUnavailable:
            # Degrade: admit on a provisional local lease (not charged anywhere) until the
            # actor is back; at most one window's worth of accuracy is lost.
            return Grant(0, 1, tokens, 1.0, limits, limits.rpm - 1, max(0, limits.tpm - tokens), 0.0, 0.0)
        whose = "" if grant.refused_by == "key" else "Team "
        scope = limits if grant.refused_by == "key" else limits.team
        assert scope is not None
        if grant.budget_exceeded:
            raise RateLimitError(
                f"{whose}Token budget reached: Limit {scope.budget_tokens} per {scope.budget_period}, Left "
                f"{grant.budget_left}, Requested {tokens}; it resets in {format_duration(grant.retry_after_s)}.",
                kind="tokens", code="budget_exceeded", retry_after_s=max(grant.retry_after_s, 0.001),
                headers=self._grant_headers(grant, 0, 0))
        if grant.requests == 0:
            kind = "tokens" if grant.remaining_requests >= 1 else "requests"
            if math.isinf(grant.retry_after_s):  # admit() refuses these first; the actor agrees
                raise _too_large(tokens, scope.tpm, None)
            limit = scope.rpm if kind == "requests" else scope.tpm
            used = limit - (grant.remaining_requests if kind == "requests" else grant.remaining_tokens)
            unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
            raise RateLimitError(
                f"{whose}Rate limit reached on {unit}: Limit {limit}, Used {used}, "
                f"Requested {1 if kind == 'requests' else tokens}.",
                kind=kind,
                retry_after_s=max(grant.retry_after_s, 0.001),
                headers=self._grant_headers(grant, 0, 0),
            )
        return grant

    def _retire(self, key: str, lease: LocalLease) -> None:
        if lease.grant.lease_id and (lease.requests_left or lease.tokens_left):
            self._returns.append((key, lease.grant.lease_id, lease.requests_left, lease.tokens_left))

    def _headers(self, lease: LocalLease) -> dict[str, str]:
        return self._grant_headers(lease.grant, lease.requests_left, lease.tokens_left)

    def _grant_headers(self, grant: Grant, requests_left: int, tokens_left: int) -> dict[str, str]:
        """The rate-limit headers, counting what this replica holds of the lease as not yet used;
        and the budget's remaining tokens where the key has a budget."""
        headers = rate_limit_headers(grant.limits.effective(), grant.remaining_requests + requests_left,
                                     grant.remaining_tokens + tokens_left, grant.reset_requests_s,
                                     grant.reset_tokens_s, self._wall())
        if grant.budget_left is not None:
            headers["x-ratelimit-remaining-budget-tokens"] = str(grant.budget_left + tokens_left)
        return headers


def _too_large(tokens: int, limit: int, param: str | None, what: str = "tokens per minute",
               whose: str = "this API key's") -> InvalidRequestError:
    return InvalidRequestError(
        f"Request too large: it needs {tokens} tokens but {whose} limit is {limit} {what}.",
        param=param,
        code="request_too_large",
    )
