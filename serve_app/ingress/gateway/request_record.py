"""What one request did, filled in as it goes and read once at its end by the access log
(serve_app/ingress/http/access_log.py), which writes the log line and the request metrics from it.

It lives in a context variable, so the parts that learn something about the request record
it where they learn it (the gateway: the model once the directory knows it, the cache lookups,
the model call's time in Serve's queue, the tokens, the first token) without threading it
through every signature; outside a request (background jobs) there is none and nothing is recorded.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field

CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer (not an error of ours)


@dataclass
class RequestRecord:
    started: float
    method: str
    endpoint: str
    client: str | None
    request_id: str | None = None
    key_id: str | None = None
    model: str = ""  # set only once the model is known to exist
    status: int = 0
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache: str | None = None  # HIT, MISS, or None when the cache was not asked
    cache_kind: str | None = None  # what the cache was asked for (response, embedding, ...)
    cache_hits: int = 0
    cache_misses: int = 0
    queued_s: list[float] = field(default_factory=list)  # each model call's wait in Serve's queue
    error_type: str | None = None
    error_code: str | None = None
    auth_failure: str | None = None  # one of catalogue.AUTH_REASONS
    aborted: bool = False  # the client went away before the response ended
    fallback_from: str | None = None  # the model asked for, when a fallback (`model`) served
    fallback_reason: str | None = None  # why (catalogue.FALLBACK_REASONS)

    def first_token(self) -> None:
        if self.ttft_s is None:
            self.ttft_s = time.monotonic() - self.started

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens

    def looked_up(self, kind: str, hits: int, misses: int) -> None:
        self.cache_kind = kind
        self.cache_hits += hits
        self.cache_misses += misses

    def failed_in_band(self, error_type: str, code: str | None) -> None:
        self.error_type, self.error_code = error_type, code


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("hfserve_request", default=None)


def current() -> RequestRecord | None:
    """The record of the request being handled, or None outside one (tests, background jobs)."""
    return _current.get()


def bind(record: RequestRecord) -> contextvars.Token:
    return _current.set(record)


def unbind(token: contextvars.Token) -> None:
    _current.reset(token)
