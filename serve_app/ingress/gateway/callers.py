"""Who is calling: the API key behind a request's credentials, and what each path needs.

HTTP-free: the auth middleware (serve_app/ingress/http/middleware.py) passes the path and the two
credential header values, and stores the Caller for the routes. Key lookups are trusted for
`key_cache_ttl_s`, which bounds how long a revocation takes to reach every replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from contract.errors import AuthenticationError, PermissionDeniedError, ServiceUnavailableError
from contract.ingress_args import IngressArgs
from serve_app.state.client import StateClient, StateUnavailable
from serve_app.state.keys import digests_equal, hash_key, well_formed
from serve_app.state.rate_limiter import UNLIMITED, Limits
from serve_app.state.teams import KeyWithTeam

OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/openapi.json"})
MISSING_KEY_MESSAGE = "Missing API key"
ADMIN_PREFIXES = ("/admin", "/status", "/metrics", "/models")
MAX_AUTH_HEADER = 512


@dataclass(frozen=True)
class Caller:
    key_id: str | None
    name: str
    admin: bool
    allowed_models: tuple[str, ...] | None
    limits: Limits | None  # None: not rate limited (auth disabled)
    team_models: tuple[str, ...] | None = None  # what the key's team may use (None: no team, or every model)
    team_id: str | None = None

    def may_use(self, *names: str | None) -> bool:
        """Whether the key, and its team, may each use one of `names` (a model, and the alias a
        request named it by)."""
        return all(allowed is None or any(name in allowed for name in names if name)
                   for allowed in (self.allowed_models, self.team_models))

    @property
    def cache_scope(self) -> str:
        return self.key_id or "anonymous"


ANONYMOUS = Caller(None, "anonymous", True, None, None)


def extract_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`; None if neither is sent."""
    if authorization is not None:
        if len(authorization) > MAX_AUTH_HEADER:
            raise AuthenticationError("The Authorization header is too long.")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Malformed Authorization header; expected 'Authorization: Bearer <key>'.")
        return token.strip()
    if api_key is not None:
        if len(api_key) > MAX_AUTH_HEADER:
            raise AuthenticationError("The X-API-Key header is too long.")
        return api_key.strip()
    return None


class Authenticator:
    def __init__(self, state: StateClient, args: IngressArgs, clock: Callable[[], float] = time.monotonic):
        self._state = state
        self._enabled = args.enable_auth
        self._public_metrics = args.public_metrics
        self._static = args.static_admin_key_sha256
        self._defaults = Limits(args.default_rpm, args.default_tpm)
        self._ttl_s = args.key_cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[KeyWithTeam | None, float]] = {}

    async def admit(self, path: str, authorization: str | None, api_key: str | None) -> Caller | None:
        """The caller allowed on `path`, None for the open paths, or the 401/403 that says why not."""
        if path in OPEN_PATHS or (path == "/metrics" and self._public_metrics):
            return None
        caller = await self.caller(authorization, api_key)
        if path.startswith(ADMIN_PREFIXES) and not caller.admin:
            raise PermissionDeniedError(f"{path} needs an admin API key.")
        return caller

    async def caller(self, authorization: str | None, api_key: str | None) -> Caller:
        if not self._enabled:
            return ANONYMOUS
        key = extract_key(authorization, api_key)
        if key is None:
            raise AuthenticationError(f"{MISSING_KEY_MESSAGE}. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
        # Never echo the key: not in errors, not in logs.
        if not well_formed(key):
            raise AuthenticationError("Incorrect API key provided.")
        digest = hash_key(key)
        if self._static and digests_equal(digest, self._static):
            return Caller("static-admin", "admin", True, None, self._defaults)
        found = await self._lookup(digest)
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        record, team = found.key, found.team
        if not record.active(time.time()):
            raise AuthenticationError("This API key has been revoked or has expired.")
        limits = Limits(record.rpm or self._defaults.rpm, record.tpm or self._defaults.tpm, record.budget_tokens,
                        record.budget_period)
        if team is not None:
            limits = replace(limits, team_id=team.id, team=Limits(team.rpm or UNLIMITED, team.tpm or UNLIMITED,
                                                                  team.budget_tokens, team.budget_period))
        return Caller(
            record.id,
            record.name,
            record.admin,
            tuple(record.allowed_models) if record.allowed_models is not None else None,
            limits,
            tuple(team.allowed_models) if team is not None and team.allowed_models is not None else None,
            team.id if team is not None else None,
        )

    async def _lookup(self, digest: str) -> KeyWithTeam | None:
        cached = self._cache.get(digest)
        now = self._clock()
        if cached is not None and now - cached[1] < self._ttl_s:
            return cached[0]
        try:
            record = await self._state.find_key(digest)
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


def auth_failure_reason(error: Exception) -> str:
    """The bounded reason (catalogue.AUTH_REASONS) an authentication error counts under."""
    if isinstance(error, PermissionDeniedError):
        return "forbidden"
    return "missing_key" if getattr(error, "message", "").startswith(MISSING_KEY_MESSAGE) else "invalid_key"
