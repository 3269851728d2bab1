"""Errors that carry their HTTP meaning: status, OpenAI error type, param and code.

Model replicas raise these too; they cross the DeploymentHandle pickled inside Ray's
RayTaskError, and `as_api_error` recovers the original. Every response body is the OpenAI
shape ``{"error": {"message", "type", "param", "code"}}`` (`ErrorResponse`). The HTTP
layer renders them in one place (serve_app/ingress/http/errors.py); nothing here knows about HTTP
frameworks, so model replicas import this module without loading one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

INTERNAL_ERROR_MESSAGE = "The server had an error while processing your request."


class ErrorDetail(BaseModel):
    """The body of every error response (errors.APIError.body)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    status_code: int = 500
    error_type: str = "internal_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})
        # Top-level fields beside "error" (e.g. /ready's per-model states).
        self.extra = dict(extra or {})

    def __reduce__(self):
        # Keep every field when Ray pickles the exception across processes.
        return (
            _rebuild_api_error,
            (type(self), self.message, self.param, self.code, self.headers, self.error_type, self.extra),
        )

    def body(self) -> dict[str, Any]:
        detail = ErrorDetail(message=self.message, type=self.error_type, param=self.param, code=self.code)
        return {**ErrorResponse(error=detail).model_dump(), **self.extra}


def _rebuild_api_error(cls, message, param, code, headers, error_type=None, extra=None):
    error = APIError.__new__(cls)
    APIError.__init__(error, message, param=param, code=code, headers=headers, extra=extra)
    if error_type is not None:
        error.error_type = error_type
    return error


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class ModelNotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"

    def __init__(self, model: str, **kwargs: Any):
        kwargs.setdefault("param", "model")
        # The same words whether the model is missing or outside the key's list, so a key
        # cannot probe which models exist.
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.", **kwargs)


class NotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowedError(APIError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class ConflictError(APIError):
    """409: the request clashes with the server's current state (a model still loading, a
    name taken by a config-file model, no room to load another)."""

    status_code = 409
    error_type = "invalid_request_error"


class RequestTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RequestHeadersTooLargeError(APIError):
    status_code = 431
    error_type = "invalid_request_error"
    default_code = "request_header_fields_too_large"


class RequestTimeoutError(APIError):
    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class ServiceUnavailableError(APIError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "model_not_ready"

    def __init__(self, message: str, *, retry_after_s: int = 5, **kwargs: Any):
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("Retry-After", str(retry_after_s))
        super().__init__(message, headers=headers, **kwargs)


class ModelOverloadedError(ServiceUnavailableError):
    """503: the model's queue is full, or no replica started the call in time; nothing ran, so
    the request may go to a fallback model."""

    default_code = "model_overloaded"


class CircuitOpenError(ServiceUnavailableError):
    """503: the model's circuit breaker refuses calls (open, or half open while its probe runs)."""

    default_code = "model_unavailable"


class ModelStartingError(ServiceUnavailableError):
    """503: a model scaled to zero whose replica did not start within the model's
    fallback_after_s; the start goes on (the gateway tries the fallbacks, then waits for it)."""

    default_code = "model_starting"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(APIError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "insufficient_permissions"


class RateLimitError(APIError):
    """429. `kind` is OpenAI's error type for rate limits: "requests" or "tokens"."""

    status_code = 429
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str = "requests", retry_after_s: float = 1.0, **kwargs):
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
        headers["retry-after-ms"] = str(max(1, math.ceil(retry_after_s * 1000)))
        super().__init__(message, headers=headers, **kwargs)
        self.error_type = kind


class GatewayTimeoutError(APIError):
    status_code = 504
    error_type = "timeout"
    default_code = "timeout"


class InternalServerError(APIError):
    status_code = 500
    error_type = "internal_error"


def too_many_documents(count: int, limit: int, model: str) -> InvalidRequestError:
    """The 400 for a rerank request over the model's max_rerank_documents (the ingress checks it
    before its cache, the replica for callers that reach it through a handle)."""
    return InvalidRequestError(
        f"documents has {count} items; model '{model}' accepts at most {limit} per request.", param="documents"
    )


def as_api_error(exc: BaseException) -> APIError | None:
    """The APIError behind `exc`, unwrapping Ray's RayTaskError if a replica raised it."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, APIError):
            # A RayTaskError(APIError) is an instance of APIError but its attributes belong
            # to the wrapper; the original is on `.cause`.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, APIError):
                return cause
            if hasattr(exc, "message"):
                return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return None


MAX_NAMED_PARAM = 64


def validation_error_to_api_error(errors: list[dict[str, Any]]) -> InvalidRequestError:
    """Render pydantic/FastAPI validation errors as one 400 naming the first bad param."""
    first = _most_telling(errors) if errors else {"msg": "Invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            code="invalid_json",
        )
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header"):  # where FastAPI found it, not the name
        loc = loc[1:]
    if first.get("type") == "extra_forbidden":  # OpenAI's words for a field it does not know
        name = _format_param(loc)[:MAX_NAMED_PARAM]  # a client chooses it: any length
        return InvalidRequestError(f"Unrecognized request argument supplied: {name}", param=name or None,
                                   code="unknown_parameter")
    # FastAPI adds the union member name (e.g. 'str', 'list[int]') to the location of
    # union fields; drop those so the param is the user's field path.
    param = _format_param(loc)
    message = str(first.get("msg", "Invalid request"))
    message = message.removeprefix("Value error, ")
    if first.get("type") == "missing" and not param:
        message = "The request body is missing or empty."
    return InvalidRequestError(
        f"{param}: {message}" if param else message, param=param or None, code="invalid_value"
    )


def _most_telling(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """For a field that takes several forms (str, or a list of str, ...), pydantic reports one
    error per form; the form the input had fails on a rule ("at least 1 character"), the others
    only on their type. Report the rule."""
    for error in errors:
        if not str(error.get("type", "")).endswith("_type"):
            return error
    return errors[0]


_UNION_TAG_NAMES = frozenset({"str", "int", "float", "bool", "bytes", "none"})
_UNION_TAG_PREFIXES = ("list[", "dict[", "tuple[", "set[", "literal[", "function-", "constrained-")


def _format_param(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAG_NAMES or str(part).startswith(_UNION_TAG_PREFIXES):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out
