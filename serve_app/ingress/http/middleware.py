"""The ingress's ASGI middleware, and `build_middleware`, which orders them. Two more wrap the
app from http/errors.py (`install_error_handlers`, run before this): the innermost, which answers
a route's bug with the generic 500, and one around the whole stack that ends the re-raise of a
middleware's bug; they belong to error rendering, not to the request's checks.

The auth middleware adapts the HTTP-free Authenticator (gateway/callers.py) to ASGI, storing the
caller for the routes and adding its rate-limit headers to every response that lacks them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.errors import (
    APIError,
    RequestHeadersTooLargeError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from contract.ingress_args import IngressArgs
from observability.recorder import Recorder
from serve_app.ingress.gateway import request_record
from serve_app.ingress.gateway.callers import Authenticator, auth_failure_reason
from serve_app.ingress.gateway.quota import Quota
from serve_app.ingress.gateway.request_record import RequestRecord
from serve_app.ingress.http.access_log import CLIENT_CLOSED, AccessLogMiddleware, route_path
from serve_app.ingress.http.errors import error_response
from serve_app.ingress.http.request_id import RequestIdMiddleware

CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# What a browser application may read from an answer: the limits it is under, the request's id,
# whether the cache answered, and how long to back off.
CORS_EXPOSED_HEADERS = (
    "x-request-id", "x-cache", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
    "x-ratelimit-remaining-budget-tokens",
    *(f"x-ratelimit-{what}-{unit}" for what in ("limit", "remaining", "reset") for unit in ("requests", "tokens")),
)


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
    """413 for bodies over the limit, whether announced by Content-Length or streamed; 408 for a
    body that stops arriving (a Content-Length larger than what is sent held the connection).

    The body is read up front (Serve's proxy has already buffered it, so this costs no extra
    waiting) and replayed to the app; an oversized body is refused before anything parses it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

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
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                error = RequestTimeoutError(f"The request body stopped arriving: nothing for {self.timeout_s:g}s, "
                                            "before the length its headers announced.", headers={"Connection": "close"})
                await _refuse(error, scope, receive, send)
                return
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


class DisconnectMiddleware:
    """Cancels a request whose client leaves; 499 in the access log if no answer had started.

    Starlette stops a streamed response when its client leaves, but never an endpoint still
    computing a whole answer (issue #27 saw abandoned non-streaming generations run to their end).
    Once the body is read, the app runs as a task while `receive` is watched for `http.disconnect`;
    cancelling the app cancels the model call, and with it the sequence in the engine.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        first = await receive()
        if first["type"] != "http.request" or first.get("more_body", False):  # a body not read whole above: not watched
            await self.app(scope, _replaying(first, receive), send)
            return
        disconnect: list[Message] = []
        gone = asyncio.Event()
        started = False

        async def receiving() -> Message:
            nonlocal first
            if first is not None:
                message, first = first, None
                return message
            await gone.wait()  # after a whole body only the disconnect comes (ASGI)
            return disconnect[0]

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        def client_closed() -> None:
            record = request_record.current()
            if record is not None and not started:
                record.status = CLIENT_CLOSED

        app = asyncio.ensure_future(self.app(scope, receiving, sending))
        watch = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait({app, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not app.done():
                disconnect.append(watch.result())
                gone.set()
                client_closed()
                app.cancel()
            await app
        except asyncio.CancelledError:
            if app.cancelled() and watch.done() and not _being_cancelled():
                # The client is gone and its call was cancelled, here or by Serve (which cancels
                # a leaving client's model calls, possibly before the disconnect reaches us).
                client_closed()
                return
            raise
        finally:
            watch.cancel()
            if not app.done():  # cancelled by Serve: the app's own cleanup (the model call's) ends first
                app.cancel()
                await asyncio.wait({app})


async def _disconnect(receive: Receive) -> Message:
    try:
        while (message := await receive())["type"] != "http.disconnect":
            pass
    except Exception as exc:
        if not _is_cancelled_fetch(exc):
            raise
        return {"type": "http.disconnect"}
    return message


def _is_cancelled_fetch(exc: Exception) -> bool:
    """Ray's Python proxy hands the replica a client's messages through an actor call, which it
    cancels when the client leaves: that receive() raises TaskCancelledError (Serve passes it on)
    where the direct ingress of HAProxy mode returns http.disconnect. Both mean the client is gone."""
    from ray.exceptions import TaskCancelledError

    return isinstance(exc, TaskCancelledError)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _replaying(first: Message, receive: Receive) -> Receive:
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


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
                     metrics: Recorder, on_finish: Callable[[RequestRecord], None] | None = None) -> None:
    """Adds the middleware; Starlette runs the one added last first, so they run bottom-up:
    the access log (every refusal below included), the request id (400), header limits (431),
    CORS (a preflight is answered here, without a key, as browsers send none; every answer below
    gets its headers), auth (401/403), body size (413/408), then disconnect cancellation (499).
    Rate limits, the cache and the breakers need the parsed request: the gateway runs them."""
    app.add_middleware(DisconnectMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=args.max_request_body_bytes, timeout_s=args.request_body_timeout_s)
    app.add_middleware(AuthMiddleware, authenticator=authenticator, quota=quota)
    if args.cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=args.cors_allow_origins, allow_headers=args.cors_allow_headers,
                           allow_methods=CORS_METHODS, expose_headers=CORS_EXPOSED_HEADERS, max_age=args.cors_max_age_s)
    app.add_middleware(HeaderLimitMiddleware, max_bytes=args.max_header_bytes, max_count=args.max_header_count)
    # Serve's proxy adds X-Request-ID to every response itself: echo=False keeps it one.
    app.add_middleware(RequestIdMiddleware, echo=False)
    app.add_middleware(AccessLogMiddleware, metrics=metrics, key_label=args.metrics_key_label, on_finish=on_finish)
