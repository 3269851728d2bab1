"""The one place where exceptions become HTTP responses: every error body is the OpenAI shape
rendered by `APIError.body()`, with the headers the error carries (Retry-After, rate-limit
headers). A 500 gets a fixed public message while the traceback goes to the server log, once.

Once: an exception that escapes the ASGI app is logged again by Ray Serve's replica ("Request
failed." with its traceback) and by the proxy (a warning holding the RayTaskError, traceback
included). So nothing escapes: an unexpected error in a route is answered as a 500 inside the
middleware stack (every middleware sees an ordinary response), and one in a middleware is
answered by Starlette's ServerErrorMiddleware, whose re-raise stops at `_NothingEscapes`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.errors import (
    INTERNAL_ERROR_MESSAGE,
    APIError,
    InternalServerError,
    MethodNotAllowedError,
    NotFoundError,
    as_api_error,
    validation_error_to_api_error,
)

logger = logging.getLogger("ray.serve")


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """The single place where exceptions become HTTP responses."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return render_exception(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error_to_api_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; list every method.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        if exc.status_code == 404:
            return error_response(NotFoundError(str(exc.detail), headers=headers))
        if exc.status_code == 405:
            return error_response(MethodNotAllowedError(str(exc.detail), headers=headers))
        err = APIError(str(exc.detail), headers=headers)
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        return error_response(err)

    # Reached only by bugs. Starlette gives a handler keyed on Exception to ServerErrorMiddleware,
    # outside every middleware, which answers and then re-raises. So a bug in a route is
    # answered by _AnswerUnexpectedErrors, the innermost middleware (added before any other:
    # create_app installs the handlers first), and every middleware sees an ordinary 500; only
    # a bug in a middleware (or after a response started) reaches this handler, and
    # _NothingEscapes ends its re-raise.
    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        return render_exception(exc, request.url.path)

    app.add_middleware(_AnswerUnexpectedErrors)
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: _NothingEscapes(build())  # type: ignore[method-assign]


class _AnswerUnexpectedErrors:
    """An exception the routes' handlers did not answer (one that is not an APIError, a
    validation error or an HTTPException) becomes the generic 500, its traceback logged."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:  # too late to answer: ServerErrorMiddleware's handler logs it
                raise
            await render_exception(exc, scope.get("path", ""))(scope, receive, send)


class _NothingEscapes:
    """Outside ServerErrorMiddleware: ends the re-raise of an exception it has handled. Its
    handler has logged the traceback and, if the response had not started, sent the 500; an
    exception escaping the app would be logged twice more by Ray. A response that broke off
    mid-body stays broken: the app returns without its last body message, so the server closes
    the connection without completing it (on Ray 2.60 the client sees an incomplete chunked
    read) and the client knows the answer is cut. The API's streams report errors in-band."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:
            if scope["type"] != "http":
                raise


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts on this path."""
    scope = {**request.scope, "method": "__none__"}
    methods: set[str] = set()
    pending = list(request.app.router.routes)
    while pending:
        route = pending.pop()
        included = getattr(route, "original_router", None)  # FastAPI keeps included routers whole
        if included is not None:
            pending.extend(included.routes)
        elif getattr(route, "methods", None) and route.matches(scope)[0] is Match.PARTIAL:
            methods.update(route.methods)
    return sorted(methods)


def render_exception(exc: BaseException, where: str = "") -> JSONResponse:
    api_error = as_api_error(exc)
    if api_error is not None:
        if api_error.status_code >= 500:
            logger.warning("%s failed with %s: %s", where, type(api_error).__name__, api_error.message)
        return error_response(api_error)
    logger.exception("unhandled error in %s", where, exc_info=exc)
    return error_response(InternalServerError(INTERNAL_ERROR_MESSAGE))
