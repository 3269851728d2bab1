"""What a failed model call means: the error the client gets, and whether it counts against
the model's circuit breaker (only failures of the model do: timeouts, dead replicas, 5xx)."""

from __future__ import annotations

import asyncio
import logging

from contract.errors import (
    INTERNAL_ERROR_MESSAGE,
    APIError,
    GatewayTimeoutError,
    InternalServerError,
    ServiceUnavailableError,
    as_api_error,
)
from contract.model_api import NotStartedInTime

logger = logging.getLogger("ray.serve")


def classify(exc: BaseException, model: str, timeout_s: float) -> tuple[APIError, bool]:
    """(the error to return, whether it counts as a model failure for the breaker)."""
    if isinstance(exc, NotStartedInTime):
        return ServiceUnavailableError(
            f"The model '{model}' did not start the request within {timeout_s:g}s: too many are queued; retry shortly.",
            code="model_overloaded", retry_after_s=2,
        ), False
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return GatewayTimeoutError(f"The model '{model}' did not answer within {timeout_s:g}s."), True
    api_error = as_api_error(exc)
    if api_error is not None:
        return api_error, api_error.status_code >= 500
    from ray import exceptions as ray_exceptions
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, BackPressureError):
        return ServiceUnavailableError(
            f"The model '{model}' has too many queued requests; retry shortly.", code="model_overloaded", retry_after_s=1
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
