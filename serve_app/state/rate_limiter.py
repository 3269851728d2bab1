"""Per-key rate limits: requests and tokens per minute in a sliding 60 s window.

Pure logic with an injected clock. The authoritative windows live in the shared state actor;
ingress replicas lease small chunks of quota from it and spend them locally, so most requests
never wait for the actor. A lease is charged to the window when it is granted and what is
left of it is given back when it expires, so the replicas together never admit more than the
limit (at most one request more, from a lease granted just as an old entry leaves the
window). Tokens are reserved at admission (prompt estimate + max_tokens) and settled from the
real usage afterwards: the difference is charged or refunded at the time of the reservation.
A key in a team leases from its own window and its team's at once: the stricter limit wins.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .budgets import BudgetBook

WINDOW_S = 60.0
LEASE_MEMORY_S = 600.0
UNLIMITED = 2**62  # a team's rate that it leaves to its keys


@dataclass(frozen=True)
class Limits:
    rpm: int
    tpm: int
    budget_tokens: int | None = None  # per budget_period (serve_app/state/budgets.py); None: no budget
    budget_period: str | None = None
    team_id: str | None = None  # the key's team, whose own limits (`team`) its keys share
    team: Limits | None = None

    def scopes(self, key_id: str) -> list[tuple[str, Limits]]:
        """The windows a request of this key is counted in: its own, and its team's."""
        own = [(key_id, self)]
        return own if self.team is None or self.team_id is None else [*own, (self.team_id, self.team)]

    def effective(self) -> Limits:
        """The stricter of the key's limits and its team's, as one set (for the headers)."""
        if self.team is None:
            return self
        budgets = [(b, p) for b, p in ((self.budget_tokens, self.budget_period),
                                       (self.team.budget_tokens, self.team.budget_period)) if b is not None]
        budget = min(budgets, default=(None, None))
        return Limits(min(self.rpm, self.team.rpm), min(self.tpm, self.team.tpm), *budget)


@dataclass
class _Entry:
    id: int
    at: float
    requests: int
    tokens: int


@dataclass
class SlidingWindow:
    """Usage entries of one key over the last WINDOW_S seconds."""

    entries: deque[_Entry] = field(default_factory=deque)
    by_id: dict[int, _Entry] = field(default_factory=dict)

    def _expire(self, now: float) -> None:
        while self.entries and self.entries[0].at <= now - WINDOW_S:
            self.by_id.pop(self.entries.popleft().id, None)

    def used(self, now: float) -> tuple[int, int]:
        self._expire(now)
        return sum(e.requests for e in self.entries), sum(e.tokens for e in self.entries)

    def reset_in(self, now: float, kind: str, limits: Limits) -> float:
        """Seconds until the window is back to its full limit (OpenAI's reset-requests/tokens)."""
        self._expire(now)
        relevant = [e for e in self.entries if (e.requests if kind == "requests" else e.tokens) > 0]
        return max(0.0, relevant[-1].at + WINDOW_S - now) if relevant else 0.0

    def wait_for(self, now: float, requests: int, tokens: int, limits: Limits) -> float:
        """Seconds until `requests` and `tokens` more would fit."""
        used_r, used_t = self.used(now)
        wait = 0.0
        for kind, need, used, limit in (("r", requests, used_r, limits.rpm), ("t", tokens, used_t, limits.tpm)):
            excess = used + need - limit
            if excess <= 0:
                continue
            if need > limit:
                return math.inf  # can never fit
            freed = 0
            for entry in self.entries:
                freed += entry.requests if kind == "r" else entry.tokens
                if freed >= excess:
                    wait = max(wait, entry.at + WINDOW_S - now)
                    break
        return max(wait, 0.0)

    def add(self, entry_id: int, now: float, requests: int, tokens: int) -> None:
        entry = _Entry(entry_id, now, requests, tokens)
        self.entries.append(entry)
        self.by_id[entry_id] = entry

    def adjust(self, entry_id: int, requests: int, tokens: int) -> None:
        """Give back (negative) or charge more (positive) on an entry still in the window."""
        entry = self.by_id.get(entry_id)
        if entry is not None:
            entry.requests = max(0, entry.requests + requests)
            entry.tokens = max(0, entry.tokens + tokens)


@dataclass(frozen=True)
class Grant:
    lease_id: int
    requests: int
    tokens: int
    lease_s: float  # how long the lease is good for, from its receipt: clocks differ between nodes
    limits: Limits  # what the caller leased under, team included
    remaining_requests: int  # in the window after this grant (the stricter scope's)
    remaining_tokens: int
    reset_requests_s: float
    reset_tokens_s: float
    retry_after_s: float = 0.0  # set when nothing could be granted
    budget_left: int | None = None  # the budget after this grant, where the key or its team has one
    budget_exceeded: bool = False  # nothing granted because the budget is spent (retry_after_s: its reset)
    refused_by: str = "key"  # whose limit refused it: "key" or "team"


@dataclass
class _Scope:
    """One window a lease is counted in (a key's or its team's), as it stands at the lease."""

    id: str
    limits: Limits
    window: SlidingWindow
    free_r: int
    free_t: int
    budget: tuple[int, float, float] | None  # (left, period start, seconds to reset)


class RateLimiter:
    """The authoritative windows (one per key and one per team). Lives in the state actor."""

    def __init__(self, clock: Callable[[], float], lease_s: float = 2.0, budgets: BudgetBook | None = None):
        self._clock = clock
        self._lease_s = lease_s
        self._windows: dict[str, SlidingWindow] = {}
        self._ids = itertools.count(1)
        self.budgets = budgets
        # lease id -> (when, [(window id, the budget period its tokens were charged to)]) for a
        # lease counted in a team or a budget: settlements of a lease come within seconds of it,
        # so ten minutes on nothing is kept for it.
        self._lease_scopes: dict[int, tuple[float, list[tuple[str, float | None]]]] = {}

    def lease(self, key_id: str, limits: Limits, min_requests: int, min_tokens: int, want_requests: int, want_tokens: int) -> Grant:
        """Grant between the minimum (what one request needs) and the wanted chunk; or nothing.
        A key (or team) with a budget gets no more tokens than it has left in its period."""
        now = self._clock()
        scopes = [self._scope(scope_id, scope_limits, now) for scope_id, scope_limits in limits.scopes(key_id)]
        tight_r = min(scopes, key=lambda s: s.free_r)
        tight_t = min(scopes, key=lambda s: min(s.free_t, s.budget[0] if s.budget else s.free_t))
        free_r = tight_r.free_r
        free_t = min(tight_t.free_t, tight_t.budget[0]) if tight_t.budget else tight_t.free_t
        budgets = [s for s in scopes if s.budget is not None]
        budget_left = min((s.budget[0] for s in budgets), default=None)  # type: ignore[index]

        def refused(scope: _Scope, **why) -> Grant:
            return Grant(0, 0, 0, 0.0, limits, max(free_r, 0), max(free_t, 0),
                         tight_r.window.reset_in(now, "requests", tight_r.limits),
                         tight_t.window.reset_in(now, "tokens", tight_t.limits),
                         budget_left=budget_left, refused_by="key" if scope is scopes[0] else "team", **why)

        for scope in budgets:
            if scope.budget[0] < min_tokens:  # type: ignore[index]
                return refused(scope, retry_after_s=scope.budget[2], budget_exceeded=True)  # type: ignore[index]
        for scope in scopes:
            if scope.free_r < min_requests or scope.free_t < min_tokens:
                return refused(scope, retry_after_s=max(s.window.wait_for(now, min_requests, min_tokens, s.limits)
                                                        for s in scopes))
        requests = max(min_requests, min(want_requests, free_r))
        tokens = max(min_tokens, min(want_tokens, free_t))
        lease_id = next(self._ids)
        for scope in scopes:
            scope.window.add(lease_id, now, requests, tokens)
            if scope.budget is not None and self.budgets is not None:
                self.budgets.charge(scope.id, scope.budget[1], tokens)
        if len(scopes) > 1 or budgets:
            self._remember(lease_id, now, [(s.id, s.budget[1] if s.budget else None) for s in scopes])
        return Grant(
            lease_id, requests, tokens, self._lease_s, limits, free_r - requests, free_t - tokens,
            tight_r.window.reset_in(now, "requests", tight_r.limits), tight_t.window.reset_in(now, "tokens", tight_t.limits),
            budget_left=budget_left - tokens if budget_left is not None else None,
        )

    def _scope(self, scope_id: str, limits: Limits, now: float) -> _Scope:
        window = self._windows.setdefault(scope_id, SlidingWindow())
        used_r, used_t = window.used(now)
        budget = None
        if limits.budget_tokens is not None and limits.budget_period is not None and self.budgets is not None:
            budget = self.budgets.left(scope_id, limits.budget_tokens, limits.budget_period)
        return _Scope(scope_id, limits, window, limits.rpm - used_r, limits.tpm - used_t, budget)

    def _remember(self, lease_id: int, now: float, scopes: list[tuple[str, float | None]]) -> None:
        self._lease_scopes[lease_id] = (now, scopes)
        while (oldest := next(iter(self._lease_scopes.values()))) and now - oldest[0] > LEASE_MEMORY_S:
            self._lease_scopes.pop(next(iter(self._lease_scopes)))

    def give_back(self, key_id: str, lease_id: int, requests: int, tokens: int) -> None:
        """Return unused quota of a lease, or (negative tokens) charge usage beyond it; to its
        team's window and to the budgets' periods too."""
        remembered = self._lease_scopes.get(lease_id)
        for scope_id, budget_start in remembered[1] if remembered else [(key_id, None)]:
            window = self._windows.get(scope_id)
            if window is not None:
                window.adjust(lease_id, -requests, -tokens)
            if budget_start is not None and self.budgets is not None and tokens:
                self.budgets.charge(scope_id, budget_start, -tokens)

    def usage(self, key_id: str) -> tuple[int, int]:
        window = self._windows.get(key_id)
        return window.used(self._clock()) if window else (0, 0)


@dataclass
class LocalLease:
    """What one ingress replica holds of a key's quota."""

    grant: Grant
    requests_left: int
    tokens_left: int
    expires_at: float  # in the replica's own clock

    @classmethod
    def of(cls, grant: Grant, now: float) -> LocalLease:
        return cls(grant, grant.requests, grant.tokens, now + grant.lease_s)

    def covers(self, now: float, tokens: int, limits: Limits) -> bool:
        """Whether this lease can admit a request of `tokens` now; never under limits that have
        changed since (the key or its team was updated): then it leases anew at once."""
        return (now < self.expires_at and self.requests_left >= 1 and self.tokens_left >= tokens
                and self.grant.limits == limits)

    def take(self, tokens: int) -> None:
        self.requests_left -= 1
        self.tokens_left -= tokens

    def give(self, tokens: int) -> None:
        self.requests_left += 1
        self.tokens_left += tokens


def chunk_for(limit: int) -> int:
    """Lease size: small against the limit (so other replicas are not starved), never 0."""
    return max(1, limit // 50)


def rate_limit_headers(limits: Limits, remaining_requests: int, remaining_tokens: int, reset_requests_s: float, reset_tokens_s: float, now_epoch: float) -> dict[str, str]:
    """Both header families: X-RateLimit-* (requests) and OpenAI's x-ratelimit-*."""
    return {
        "X-RateLimit-Limit": str(limits.rpm),
        "X-RateLimit-Remaining": str(max(0, remaining_requests)),
        "X-RateLimit-Reset": str(int(math.ceil(now_epoch + reset_requests_s))),
        "x-ratelimit-limit-requests": str(limits.rpm),
        "x-ratelimit-remaining-requests": str(max(0, remaining_requests)),
        "x-ratelimit-reset-requests": format_duration(reset_requests_s),
        "x-ratelimit-limit-tokens": str(limits.tpm),
        "x-ratelimit-remaining-tokens": str(max(0, remaining_tokens)),
        "x-ratelimit-reset-tokens": format_duration(reset_tokens_s),
    }


def format_duration(seconds: float) -> str:
    """OpenAI's style: '6s', '1m30s', '250ms'."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{int(math.ceil(seconds * 1000))}ms"
    whole = int(math.ceil(seconds))
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
