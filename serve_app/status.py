"""What /status reports: every model with its state, backend, breaker and engine counters,
the shared cache's statistics and the state actor's health."""

from __future__ import annotations

import asyncio
from typing import Any

from .gateway import Gateway
from .model_directory import ModelEntry
from .state import StateUnavailable

ENGINE_STATS_TIMEOUT_S = 2.0


async def _engine_stats(entry: ModelEntry) -> dict[str, Any] | None:
    if entry.status != "ready" or entry.client is None:
        return None
    try:
        return (await asyncio.wait_for(entry.client.stats(), ENGINE_STATS_TIMEOUT_S)).model_dump()
    except Exception:  # noqa: BLE001 - a busy model still gets listed
        return None


def _model_status(gateway: Gateway, entry: ModelEntry, engine: dict[str, Any] | None, breakers: dict) -> dict[str, Any]:
    info = entry.info
    return {
        **entry.card().model_dump(),
        "status": gateway.model_status(entry.status, entry.id),
        "message": entry.message or None,
        "backend": info.backend if info else None,
        "device": info.device if info else None,
        "source": info.source if info else None,
        "max_model_len": info.max_model_len if info else None,
        "circuit_breaker": breakers.get(entry.id, {"state": "closed"}),
        "engine": engine,
    }


async def status_report(gateway: Gateway, uptime_s: float) -> dict[str, Any]:
    entries = gateway.directory.entries()
    engines = await asyncio.gather(*(_engine_stats(entry) for entry in entries))
    try:
        shared = await gateway.state.call("status")
    except StateUnavailable:
        shared = {"error": "the state actor is restarting"}
    breakers = shared.get("breakers", {})
    return {
        "uptime_s": round(uptime_s, 1),
        "models": [_model_status(gateway, entry, engine, breakers) for entry, engine in zip(entries, engines, strict=True)],
        "cache": shared.get("cache"),
        "state": {"uptime_s": shared.get("uptime_s"), "error": shared.get("error")},
    }
