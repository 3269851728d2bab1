"""Per-key usage (requests, prompt and completion tokens), and usage per (key, model, UTC day)
with errors and cache hits, gathered per replica and flushed to the key store every second; kept
for the next flush while the state actor restarts or the key store cannot be written (a full
disk)."""

from __future__ import annotations

import logging
import time

from contract.errors import as_api_error
from serve_app.ingress.gateway import request_record as access_log
from serve_app.ingress.gateway.callers import Caller
from serve_app.state.client import StateClient, StateUnavailable
from serve_app.state.keys import KeyUsage
from serve_app.state.usage_book import COUNTS, DailyUsage, utc_day

logger = logging.getLogger("ray.serve")


class UsageRecorder:
    def __init__(self, state: StateClient):
        self._state = state
        self._pending: dict[str, KeyUsage] = {}
        self._daily: dict[tuple[str, str, str], DailyUsage] = {}
        self._failing = False

    def record_request(self, request: access_log.RequestRecord) -> None:
        """A finished request, as its access-log line reports it: counted for its key, model and
        day when it had a key and reached a model that exists."""
        if request.key_id is None or request.key_id == "static-admin" or not request.model:
            return
        day = utc_day(time.time())
        row = self._daily.setdefault((request.key_id, request.model, day), DailyUsage(
            key_id=request.key_id, model=request.model, day=day))
        row.requests += 1
        row.prompt_tokens += request.prompt_tokens or 0
        row.completion_tokens += request.completion_tokens or 0
        row.errors += request.status >= 400 and request.status != access_log.CLIENT_CLOSED
        row.cache_hits += request.cache == "HIT"

    def record(self, caller: Caller, prompt_tokens: int, completion_tokens: int) -> None:
        request = access_log.current()
        if request is not None:  # the access-log line reports the request's tokens
            request.usage(prompt_tokens, completion_tokens)
        if caller.key_id is None or caller.key_id == "static-admin":
            return
        usage = self._pending.setdefault(caller.key_id, KeyUsage())
        usage.requests += 1
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        usage.last_used_at = time.time()

    async def flush(self) -> None:
        await self._flush_daily()
        if self._pending:
            pending, self._pending = self._pending, {}
            try:
                await self._state.add_usage(pending)
            except Exception as exc:
                # The actor restarting, or the store refusing writes (a KeyStoreWriteError):
                # keep the usage; anything else is a bug and propagates.
                error = exc if isinstance(exc, StateUnavailable) else as_api_error(exc)
                if error is None:
                    raise
                if not self._failing:  # once per outage, not once a second
                    logger.warning("key usage not saved yet, kept for the next flush: %s", error)
                    self._failing = True
                for key, usage in pending.items():  # keep it for the next flush
                    mine = self._pending.setdefault(key, KeyUsage())
                    mine.requests += usage.requests
                    mine.prompt_tokens += usage.prompt_tokens
                    mine.completion_tokens += usage.completion_tokens
                    mine.last_used_at = max(mine.last_used_at or 0, usage.last_used_at or 0)
            else:
                self._failing = False

    async def _flush_daily(self) -> None:
        if not self._daily:
            return
        daily, self._daily = self._daily, {}
        try:
            await self._state.usage_add(list(daily.values()))
        except Exception as exc:
            if not isinstance(exc, StateUnavailable) and as_api_error(exc) is None:
                raise
            for key, row in daily.items():  # kept for the next flush, added to what came since
                mine = self._daily.setdefault(key, DailyUsage(key_id=row.key_id, model=row.model, day=row.day))
                for name in COUNTS:
                    setattr(mine, name, getattr(mine, name) + getattr(row, name))
