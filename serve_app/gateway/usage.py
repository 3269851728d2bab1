"""Per-key usage (requests, prompt and completion tokens), gathered per replica and flushed
to the key store in batches; kept for the next flush while the state actor restarts."""

from __future__ import annotations

import time

from ..auth import KeyUsage
from ..state import StateClient, StateUnavailable
from .callers import Caller


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
