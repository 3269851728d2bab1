"""What a failed model call means: the error the client gets, and whether it counts against
the model's circuit breaker (only failures of the model do: timeouts, dead replicas, 5xx; a
request or answer over the ingress-model message limit is the request's own: a 413)."""

from __future__ import annotations

import asyncio
import logging

from contract.errors import (
    INTERNAL_ERROR_MESSAGE,
    APIError,
    CircuitOpenError,
    GatewayTimeoutError,
    InternalServerError,
    ModelOverloadedError,
    RequestTooLargeError,
    ServiceUnavailableError,
    as_api_error,
)
from contract.model_api import NotStartedInTime

logger = logging.getLogger("ray.serve")


def is_cancellation(exc: BaseException) -> bool:
    """The call was cancelled, not failed: by this request's own task, or by Serve, which cancels
    the model calls of a request whose client left (RequestCancelledError in their awaiter). Serve
    runs the ingress's code on its own thread, so either of the two may arrive first."""
    from ray.serve.exceptions import RequestCancelledError

    return isinstance(exc, asyncio.CancelledError | RequestCancelledError)


def never_ran(error: APIError) -> bool:
    """The model refused the call before running any of it: its breaker, or its full queue."""
    return isinstance(error, CircuitOpenError | ModelOverloadedError)


def classify_failure(exc: BaseException, model: str, timeout_s: float) -> tuple[APIError, bool]:
    """(the error to return, whether it counts as a model failure for the breaker)."""
    if isinstance(exc, NotStartedInTime):
        return ModelOverloadedError(
            f"The model '{model}' did not start the request within {timeout_s:g}s: too many are queued; retry shortly.",
            retry_after_s=2,
        ), False
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return GatewayTimeoutError(f"The model '{model}' did not answer within {timeout_s:g}s."), True
    api_error = as_api_error(exc)
    if api_error is not None:
        return api_error, api_error.status_code >= 500
    if _over_message_limit(exc):
        return RequestTooLargeError(
            f"This request to model '{model}', or its answer, is larger than the largest message between "
            "the server's processes. Send fewer or shorter inputs per request."
        ), False
    from ray import exceptions as ray_exceptions
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, BackPressureError):
        return ModelOverloadedError(
            f"The model '{model}' has too many queued requests; retry shortly.", retry_after_s=1
        ), False
    if isinstance(exc, ray_exceptions.RayActorError | ray_exceptions.ActorUnavailableError):
        return ServiceUnavailableError(
            f"The model '{model}' replica is unavailable; retry shortly.", code="model_unavailable", retry_after_s=2
        ), True
    if isinstance(exc, ray_exceptions.RayTaskError):
        # Raised inside the replica, which logged the traceback (with this request's id).
        logger.error("model call to %s failed in the replica: %s", model, type(exc.cause).__name__)
    else:
        logger.error("model call to %s failed", model, exc_info=exc)
    return InternalServerError(INTERNAL_ERROR_MESSAGE), True


def _over_message_limit(exc: BaseException) -> bool:
    """gRPC's RESOURCE_EXHAUSTED on the ingress-model call (`_by_reference=False`): Serve passes
    the AioRpcError through as it is (it maps only UNAVAILABLE), whichever side found the
    message over its `max_receive_message_length`. Serve's backpressure comes as its own
    BackPressureError, and the model's errors inside RayTaskError, never as this code."""
    import grpc

    code = getattr(exc, "code", None) if isinstance(exc, grpc.RpcError) else None
    return callable(code) and code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def own_failure(error: APIError, model: str) -> APIError:
    """The error of a failed call after the model answered a probe of its own: the same status,
    saying that the request itself is the likely cause and that the model serves others."""
    own = type(error).__new__(type(error))
    APIError.__init__(
        own,
        f"{error.message.rstrip('.')}. The model '{model}' answers other requests (it answered a probe just "
        "now), so this request itself is the likely cause, its size or its content: retried unchanged it will "
        "likely fail again.",
        param=error.param, code=error.code, headers=error.headers, extra=error.extra,
    )
    own.error_type = error.error_type
    return own
