"""The ingress's ASGI middleware, and `build_middleware`, the one place that sets their order.

Both are thin: the body-size limit refuses oversized bodies before anything parses them, and
the auth middleware adapts the HTTP-free Authenticator (gateway/callers.py) to ASGI, storing
the caller for the routes and adding the caller's rate-limit headers to every response that
lacks them (errors included).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.config import IngressArgs
from contract.errors import APIError, RequestHeadersTooLargeError, RequestTooLargeError
from observability.recorder import Recorder

from ..gateway import request_record
from ..gateway.callers import Authenticator, auth_failure_reason
from ..gateway.quota import Quota
from .access_log import AccessLogMiddleware, route_path
from .errors import error_response
from .request_id import RequestIdMiddleware


class HeaderLimitMiddleware:
    """431 for a request with too many headers, or headers too large in total.

    Ray's proxy (uvicorn with httptools) sets no such limit, so it is enforced here, before
    anything reads the headers; the proxy has still received them (docs/security.md).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_count: int):
        self.app = app
        self.max_bytes = max_bytes
        self.max_count = max_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers", ())
            if len(headers) > self.max_count:
                await _refuse(RequestHeadersTooLargeError(f"The request has more than {self.max_count} headers."),
                              scope, receive, send)
                return
            if sum(len(name) + len(value) for name, value in headers) > self.max_bytes:
                await _refuse(RequestHeadersTooLargeError(f"The request headers exceed {self.max_bytes} bytes in total."),
                              scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _refuse(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(error)(scope, receive, send)


class BodySizeLimitMiddleware:
    """413 for bodies over the limit, whether announced by Content-Length or streamed.

    The body is read up front (Serve's proxy has already buffered it, so this costs no extra
    waiting) and replayed to the app; an oversized body is refused before anything parses it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()  # later calls wait for http.disconnect, as usual

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _refuse(RequestTooLargeError(f"The request body exceeds the limit of {self.max_bytes} bytes."),
                      scope, receive, send)


class AuthMiddleware:
    """Authenticates every request except the open paths (/health, /ready, the API docs),
    keeps /admin, /status and /metrics to admin keys, and puts the caller in `request.state`."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, quota: Quota):
        self.app = app
        self.authenticator = authenticator
        self.quota = quota

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            caller = await self.authenticator.admit(route_path(scope), headers.get("authorization"), headers.get("x-api-key"))
        except APIError as error:
            record = request_record.current()
            if record is not None:
                record.auth_failure = auth_failure_reason(error)
            await error_response(error)(scope, receive, send)
            return
        if caller is None:  # an open path
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, _with_headers(send, lambda: self.quota.headers_for(caller)))


def _with_headers(send: Send, extra: Callable[[], dict[str, str]]) -> Send:
    """`send` that adds headers the response does not set itself (the route's own win)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            message["headers"] = list(message.get("headers", [])) + [
                (name.lower().encode(), value.encode()) for name, value in extra().items()
                if name.lower().encode() not in present
            ]
        await send(message)

    return sending


def build_middleware(app: FastAPI, args: IngressArgs, *, authenticator: Authenticator, quota: Quota,
                     metrics: Recorder) -> None:
    """Middleware, outermost first:

    -1. AccessLogMiddleware: one access-log line and the request metrics per request, every
        refusal below included (it reads the request id the next one stores, at the end).
    0. RequestIdMiddleware (http/request_id.py): 400 for a malformed x-request-id; the
       request's id in `scope["state"]["request_id"]` (Ray's proxy returns it in responses).
    1. HeaderLimitMiddleware: 431 before anything reads the headers.
    2. AuthMiddleware: 401/403 before anything else runs; rate-limit headers on every response.
    3. BodySizeLimitMiddleware: 413 for oversized bodies before anything parses them.

    (Rate limits, the cache and the breakers need the parsed request, so they run in the
    gateway, called by the routes.) Starlette runs the middleware added last first.
    """
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=args.max_request_body_bytes)
    app.add_middleware(AuthMiddleware, authenticator=authenticator, quota=quota)
    app.add_middleware(HeaderLimitMiddleware, max_bytes=args.max_header_bytes, max_count=args.max_header_count)
    # Serve's proxy adds X-Request-ID to every response itself: echo=False keeps it one.
    app.add_middleware(RequestIdMiddleware, echo=False)
    app.add_middleware(AccessLogMiddleware, metrics=metrics, key_label=args.metrics_key_label)
