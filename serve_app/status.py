"""What /status reports: every model with its state, backend, breaker and each of its replicas
(node, platform, engine counters), every node's hardware report, the shared cache's
statistics and the state actor's health."""

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
        **entry.card().model_dump(exclude={"replicas"}),
        "status": gateway.model_status(entry.status, entry.id),
        "message": entry.message or None,
        "source": info.source if info else None,
        "max_model_len": info.max_model_len if info else None,
        "revision": info.revision if info else None,
        "circuit_breaker": breakers.get(entry.id, {"state": "closed"}),
        "engine": engine,  # live counters of the replica that answered now
        # Every live replica with its engine counters, as it last reported (every 5 s).
        "replicas": [record.model_dump() for record in entry.placed],
    }


async def _nodes(gateway: Gateway) -> list[dict[str, Any]] | dict[str, str]:
    if gateway.node_reports is None:
        return []
    try:
        return await gateway.node_reports()
    except Exception as exc:  # noqa: BLE001 - the supervisor restarting must not fail /status
        return {"error": f"the hardware actors did not answer: {type(exc).__name__}"}


async def status_report(gateway: Gateway, uptime_s: float) -> dict[str, Any]:
    entries = gateway.directory.entries()
    nodes = asyncio.ensure_future(_nodes(gateway))
    engines = await asyncio.gather(*(_engine_stats(entry) for entry in entries))
    try:
        shared = await gateway.state.call("status")
    except StateUnavailable:
        shared = {"error": "the state actor is restarting"}
    breakers = shared.get("breakers", {})
    return {
        "uptime_s": round(uptime_s, 1),
        "models": [_model_status(gateway, entry, engine, breakers) for entry, engine in zip(entries, engines, strict=True)],
        "nodes": await nodes,
        "cache": shared.get("cache"),
        "state": {"uptime_s": shared.get("uptime_s"), "settings": shared.get("settings"), "error": shared.get("error")},
    }
