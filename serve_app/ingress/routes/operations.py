"""Operations: /health (liveness, open), /ready (every model ready, open; the model names only
to a caller with a valid key), /status (admin) and /metrics (admin unless public_metrics; the
whole cluster's hf_server_* families)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from contract.errors import APIError, ErrorResponse, ServiceUnavailableError
from observability.exposition import CONTENT_TYPE
from serve_app.ingress.gateway import Gateway
from serve_app.ingress.gateway.callers import Caller
from serve_app.ingress.http.errors import error_response
from serve_app.ingress.http.openapi import responses
from serve_app.ingress.status_report import status_report


class Health(BaseModel):
    status: Literal["ok"]
    uptime_s: float


MODELS_READY = "Models ready, or idle (scaled to zero: the next request starts one)."
MODELS_TOTAL = "Models readiness counts: every deployed one but run-time loads still going or failed."
NAMED = "Only with a valid API key (to every caller where keys are off), and only the models the key may use."


class Ready(BaseModel):
    status: Literal["ready"]
    models_ready: int = Field(description=MODELS_READY)
    models_total: int = Field(description=MODELS_TOTAL)
    models: dict[str, str] | None = Field(None, description="Each model's status. " + NAMED)


class NotReady(ErrorResponse):
    status: Literal["not_ready"]
    models_ready: int = Field(description=MODELS_READY)
    models_total: int = Field(description=MODELS_TOTAL)
    models: dict[str, str] | None = Field(None, description="Each model's status. " + NAMED)
    not_ready: list[str] | None = Field(None, description="The models not ready. " + NAMED)


async def keyed_caller(gateway: Gateway, request: Request) -> Caller | None:
    """The caller of an open path, if it sent a valid key; None otherwise. A probe with no key
    (or a stale one) still gets its answer, just not the model names."""
    try:
        return await gateway.authenticator.caller(request.headers.get("authorization"), request.headers.get("x-api-key"))
    except APIError:
        return None


def operations_router(gateway: Gateway, started: float,
                      metrics: Callable[[], Awaitable[bytes]] | None = None) -> APIRouter:
    router = APIRouter()
    directory = gateway.directory

    @router.get("/health", response_model=Health, responses=responses(431))
    async def health():
        return {"status": "ok", "uptime_s": round(time.time() - started, 1)}

    @router.get("/ready", response_model=Ready, response_model_exclude_none=True, responses={
        503: {"model": NotReady, "description": "Some model is not ready (or none is deployed)."}, **responses(431)})
    async def ready(request: Request):
        """200 when every model is ready, else 503; counts for every caller, names with a key."""
        await directory.refresh(max_age_s=0.5)
        models = {card.id: card.status for card in await directory.cards()}
        # A model scaled to zero is ready (its next request starts it); a run-time load that
        # is still going or failed is its loader's business, not the server's readiness.
        runtime = gateway.directory.runtime
        counted = {m: s for m, s in models.items() if not (m in runtime and s in ("loading", "pending", "failed"))}
        waiting = sorted(model for model, status in counted.items() if status not in ("ready", "idle"))
        counts = {"models_ready": len(counted) - len(waiting), "models_total": len(counted)}
        caller = await keyed_caller(gateway, request)
        named = {m: s for m, s in models.items() if caller.may_use(m)} if caller else {}
        if counted and not waiting:
            return {"status": "ready", **counts, "models": named if caller else None}
        why = {entry.id: entry.message for entry in directory.entries() if entry.message}
        shown = [m for m in waiting if m in named]
        # Serve's own words say why (e.g. no node has the resources a replica asks for).
        message = (
            "No models are deployed." if not models else "No model is ready yet." if not waiting
            else "Models not ready: " + ", ".join(f"{m} ({models[m]}{': ' + why[m] if m in why else ''})" for m in shown)
            if shown else f"{len(waiting)} of {len(counted)} models are not ready yet."
        )
        names = {"models": named, "not_ready": shown} if caller else {}
        # Returned rather than raised: not ready is an answer here, not a failure to log.
        return error_response(ServiceUnavailableError(
            message, code="models_not_ready", retry_after_s=2, extra={"status": "not_ready", **counts, **names},
        ))

    @router.get("/status", response_model=dict[str, Any], responses=responses(401, 403, 431))
    async def status():
        return await status_report(gateway, time.time() - started)

    @router.get("/metrics", response_class=Response, responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format, the whole cluster."},
        **responses(401, 403, 431, 503)})
    async def cluster_metrics():
        if metrics is None:
            raise ServiceUnavailableError("Metrics are not collected by this server.", code="metrics_unavailable")
        return Response(await metrics(), media_type=CONTENT_TYPE)

    return router
