"""Operations: /health (liveness, open), /ready (every model ready, open) and /status (admin)."""

from __future__ import annotations

import time

from fastapi import APIRouter

from contract.errors import ServiceUnavailableError

from ..gateway import Gateway
from ..http.errors import error_response
from ..status import status_report


def operations_router(gateway: Gateway, started: float) -> APIRouter:
    router = APIRouter()
    directory = gateway.directory

    @router.get("/health")
    async def health():
        return {"status": "ok", "uptime_s": round(time.time() - started, 1)}

    @router.get("/ready")
    async def ready():
        await directory.refresh(max_age_s=0.5)
        models = {card.id: card.status for card in await directory.cards()}
        waiting = sorted(model for model, status in models.items() if status != "ready")
        if models and not waiting:
            return {"status": "ready", "models": models}
        message = "No models are deployed." if not models else "Models not ready: " + ", ".join(
            f"{m} ({models[m]})" for m in waiting
        )
        # Returned rather than raised: not ready is an answer here, not a failure to log.
        return error_response(ServiceUnavailableError(
            message, code="models_not_ready", retry_after_s=2,
            extra={"status": "not_ready", "models": models, "not_ready": waiting},
        ))

    @router.get("/status")
    async def status():
        return await status_report(gateway, time.time() - started)

    return router
