"""HTTP plumbing shared by the routes: JSON and SSE responses, the body-size limit, and the
middleware order (one function, so the order is written down in one place)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import (
    INTERNAL_ERROR_MESSAGE,
    InternalServerError,
    RequestTooLargeError,
    as_api_error,
    error_response,
)

logger = logging.getLogger("ray.serve")

SSE_DONE = b"data: [DONE]\n\n"


def json_response(model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    # model_dump_json serialises in pydantic's Rust core: one pass, no intermediate dict.
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json", headers=headers)


def _sse_event(payload: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json()
    else:
        import json

        body = json.dumps(payload)
    return b"data: " + body.encode() + b"\n\n"


async def sse_response(chunks: Any) -> StreamingResponse:
    """Stream model chunks as server-sent events, ending with `data: [DONE]`.

    The first chunk is awaited before the response starts, so that errors the model raises
    up front (bad parameters, context too long) still become a proper 4xx, not a 200 stream.
    """
    iterator = chunks.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        _cancel(chunks)
        raise

    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _sse_event(first)
                async for chunk in iterator:
                    yield _sse_event(chunk)
            yield SSE_DONE
        except Exception as exc:  # noqa: BLE001 - headers are sent; report in-band
            error = as_api_error(exc)
            if error is None:
                logger.exception("stream failed")
                error = InternalServerError(INTERNAL_ERROR_MESSAGE)
            yield _sse_event(error.body())
            yield SSE_DONE
        finally:
            # On client disconnect Starlette cancels this generator; cancelling the model
            # call stops generation there and frees the engine's KV cache.
            _cancel(chunks)
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _cancel(chunks: Any) -> None:
    cancel = getattr(chunks, "cancel", None)
    if callable(cancel):
        cancel()


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
        error = RequestTooLargeError(f"The request body exceeds the limit of {self.max_bytes} bytes.")
        await error_response(error)(scope, receive, send)


def build_middleware(app: FastAPI, *, max_request_body_bytes: int) -> None:
    """Middleware, outermost first:

    1. BodySizeLimitMiddleware: refuse oversized bodies (413) before anything parses them.

    (The gateway steps of later issues, auth, rate limits, cache and breakers, run inside the
    routes' service calls rather than as middleware, because they need the parsed request.)
    """
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_request_body_bytes)
