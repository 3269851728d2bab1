"""Responses the routes send: JSON, server-sent events, and a gateway Reply as either."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse

from contract.errors import INTERNAL_ERROR_MESSAGE, InternalServerError, as_api_error
from serve_app.ingress.gateway import ChunkStream, Reply
from serve_app.ingress.gateway import request_record as access_log

logger = logging.getLogger("ray.serve")

SSE_DONE = b"data: [DONE]\n\n"


def json_response(model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    # model_dump_json serialises in pydantic's Rust core: one pass, no intermediate dict.
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json", headers=headers)


def _sse_event(payload: BaseModel | dict[str, Any]) -> bytes:
    body = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return b"data: " + body.encode() + b"\n\n"


async def respond(reply: Reply) -> Response:
    """A gateway Reply as JSON or SSE, with its rate-limit and cache headers."""
    record = access_log.current()
    if record is not None:
        record.cache = reply.cache
    if isinstance(reply.result, ChunkStream):
        return await sse_response(reply.result, headers=reply.headers)
    return json_response(reply.result, headers=reply.headers)


async def sse_response(chunks: ChunkStream, headers: dict[str, str] | None = None) -> StreamingResponse:
    """Stream model chunks as server-sent events, ending with `data: [DONE]`.

    The first chunk is awaited before the response starts, so that errors the model raises
    up front (bad parameters, context too long) still become a proper 4xx, not a 200 stream.
    """
    record = access_log.current()
    chunks = await chunks.started()
    iterator = chunks.__aiter__()

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in iterator:
                yield _sse_event(chunk)
            yield SSE_DONE
        except Exception as exc:  # noqa: BLE001 - headers are sent; report in-band
            error = as_api_error(exc)
            if error is None:
                logger.exception("stream failed")
                error = InternalServerError(INTERNAL_ERROR_MESSAGE)
            if record is not None:
                record.failed_in_band(error.error_type, error.code)
            yield _sse_event(error.body())
            yield SSE_DONE
        finally:
            # On client disconnect Starlette cancels this generator; cancelling the model
            # call stops generation there and frees the engine's KV cache.
            chunks.cancel()
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
