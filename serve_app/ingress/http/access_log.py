"""One record per request, written once at its end (a stream's last byte, or the client leaving):
the JSON access-log line and the request metrics (hf_server_requests_total, _request_duration_seconds,
_errors_total, _rate_limited_total, _auth_failures_total, _cache_hits/_misses_total, _request_queue_seconds,
_fallbacks_total).

The record lives in a context variable (gateway/request_record.py), so the parts that learn
something fill it in where they learn it: the auth middleware the key id, the gateway the model,
the cache lookups, the queue time and the tokens, the SSE response its first token and an in-band error. A client
that leaves before its answer starts is a 499 (nginx's "client closed request"): no answer, and
no error of ours. Label values stay bounded: models that exist, route templates, error types.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability import catalogue
from observability.recorder import Recorder
from serve_app.ingress.gateway.request_record import CLIENT_CLOSED, RequestRecord, bind, unbind
from serve_app.ingress.http.request_id import is_valid_request_id

access_logger = logging.getLogger("ray.serve.hfserve.access")

# Paths logged at DEBUG: liveness probes and metric scrapes would drown the log at INFO.
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
ROUTES = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/rerank", "/v1/classify", "/v1/models",
    "/tokenize", "/detokenize",
    "/health", "/ready", "/status", "/metrics", "/docs", "/openapi.json",
})
# Ray's log formatters write this `extra` dict's items as top-level fields of the JSON line.
RAY_FLATTENED = "ray_serve_extra_fields"
MAX_ERROR_BODY = 64 * 1024  # an error body larger than this is not ours; its type is not parsed


def route_path(scope: Scope) -> str:
    """The path below the application's route prefix (Serve mounts an app at its prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def endpoint_of(path: str) -> str:
    """The route template a path matched, or "other": never the raw path (a label, bounded)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path == "/admin" or path.startswith("/admin/"):
        return "/admin"
    return "other"


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: Recorder, key_label: bool = False,
                 on_finish: Callable[[RequestRecord], None] | None = None):
        self.app = app
        self.metrics = metrics
        self.key_label = key_label
        self.on_finish = on_finish  # hears every finished request (the usage per key, model and day)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        record = RequestRecord(
            started=time.monotonic(), method=scope["method"], endpoint=endpoint_of(route_path(scope)),
            client=f"{client[0]}:{client[1]}" if client else None,
        )
        token = bind(record)
        error_body: list[bytes] = []
        finished = False

        async def sending(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                record.status = message["status"]
            elif message["type"] == "http.response.body" and record.status >= 400:
                if sum(map(len, error_body)) < MAX_ERROR_BODY:
                    error_body.append(message.get("body", b""))
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True

        cancelled = False
        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            cancelled = True  # Serve cancels a request whose client disconnected
            raise
        finally:
            unbind(token)
            record.aborted = not finished
            record.request_id = scope.get("state", {}).get("request_id") or _serve_request_id()
            caller = scope.get("state", {}).get("caller")
            if caller is not None:
                record.key_id = caller.key_id
            if record.status >= 400 and record.status != CLIENT_CLOSED and record.error_type is None:
                record.error_type, record.error_code = _error_of(b"".join(error_body))
            if record.status == 0:  # no answer: the client left, or the app raised (Serve answers 500)
                record.status = CLIENT_CLOSED if cancelled else 500
            self._finish(record)

    def _finish(self, record: RequestRecord) -> None:
        elapsed = time.monotonic() - record.started
        model, endpoint, status = record.model, record.endpoint, str(record.status)
        key = (record.key_id or "") if self.key_label else ""
        self.metrics.inc(catalogue.REQUESTS, model=model, endpoint=endpoint, status=status, key_id=key)
        self.metrics.observe(catalogue.REQUEST_DURATION, elapsed, model=model, endpoint=endpoint)
        if record.error_type is not None:
            self.metrics.inc(catalogue.ERRORS, model=model, endpoint=endpoint, type=record.error_type)
        if record.status == 429 and record.error_type in catalogue.LIMIT_KINDS:
            self.metrics.inc(catalogue.RATE_LIMITED, model=model, limit=record.error_type)
        if record.auth_failure is not None:
            self.metrics.inc(catalogue.AUTH_FAILURES, reason=record.auth_failure)
        if record.fallback_from is not None and record.fallback_reason is not None:
            self.metrics.inc(catalogue.FALLBACKS, model=record.fallback_from, fallback=model,
                             reason=record.fallback_reason)
        if record.cache_kind is not None:
            self.metrics.inc(catalogue.CACHE_HITS, record.cache_hits, model=model, kind=record.cache_kind)
            self.metrics.inc(catalogue.CACHE_MISSES, record.cache_misses, model=model, kind=record.cache_kind)
        for queued_s in record.queued_s:
            self.metrics.observe(catalogue.REQUEST_QUEUE, queued_s, model=model)
        if self.on_finish is not None:
            self.on_finish(record)
        level = logging.DEBUG if endpoint in QUIET_PATHS and record.status < 400 else logging.INFO
        if access_logger.isEnabledFor(level):
            access_logger.log(level, "%s %s %s %.1fms", record.method, endpoint, record.status, elapsed * 1000,
                              extra={RAY_FLATTENED: _line(record, elapsed)})


def _line(record: RequestRecord, elapsed: float) -> dict:
    """The access-log fields (a key id, never its secret; the client's address)."""
    return {
        "request_id": record.request_id, "key_id": record.key_id, "model": record.model or None,
        "endpoint": record.endpoint, "method": record.method, "status": record.status,
        "latency_ms": round(elapsed * 1000, 2),
        "ttft_ms": round(record.ttft_s * 1000, 2) if record.ttft_s is not None else None,
        "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
        "cache": record.cache, "error_type": record.error_type, "error_code": record.error_code,
        "client": record.client, "aborted": record.aborted, "fallback_from": record.fallback_from,
    }


def _error_of(body: bytes) -> tuple[str, str | None]:
    try:
        error = json.loads(body)["error"]
        return str(error.get("type") or "error")[:64], (str(error["code"])[:64] if error.get("code") else None)
    except (ValueError, KeyError, TypeError, AttributeError):
        return "error", None  # not our error body (e.g. Starlette's own 404 text)


def _serve_request_id() -> str | None:
    """Serve's id for a request refused before the request-id middleware stored one: only if
    it is a valid id (a malformed one is what got the request refused: not for the log)."""
    try:
        from ray.serve.context import _get_serve_request_context

        request_id = _get_serve_request_context().request_id
    except Exception:  # noqa: BLE001 - outside Serve (unit tests)
        return None
    return request_id if request_id and is_valid_request_id(request_id) else None
