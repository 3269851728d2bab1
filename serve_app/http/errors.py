"""The one place where exceptions become HTTP responses: every error body is the OpenAI shape
rendered by `APIError.body()`, with the headers the error carries (Retry-After, rate-limit
headers). A 500 gets a fixed public message while the traceback goes to the server log."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

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

    # Reached only by bugs: Starlette sends this body, then re-raises for the server log.
    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        return render_exception(exc, request.url.path)


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
