"""What /status reports: every model with its state, backend, breaker and each of its replicas
(Serve's state of it, node, pid, ongoing requests, engine counters), every node's hardware
report, the shared cache's statistics and the state actor's health. The shape is
contract/status.py's StatusReport.

Replica states come from Serve's controller (`get_serve_details`, the call `serve.status()`
makes: one controller round trip, a few ms), fetched in a thread per /status call and bounded
by SERVE_STATES_TIMEOUT_S; when it fails the replicas are listed with `state: null` and
`replica_state_error` says why. Nothing of this is on the request path."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from contract.config import MODEL_DEPLOYMENT_NAME
from contract.status import (
    ModelStatus,
    ServeReplica,
    StatusReport,
    merge_replicas,
    serve_replicas,
    totals,
)
from serve_app.ingress.gateway import Gateway
from serve_app.ingress.model_directory import ModelEntry
from serve_app.state.client import StateUnavailable

ENGINE_STATS_TIMEOUT_S = 2.0
SERVE_STATES_TIMEOUT_S = 2.0


async def _engine_stats(entry: ModelEntry) -> dict[str, Any] | None:
    if entry.status != "ready" or entry.client is None:
        return None
    try:
        return (await asyncio.wait_for(entry.client.stats(), ENGINE_STATS_TIMEOUT_S)).model_dump()
    except Exception:  # noqa: BLE001 - a busy model still gets listed
        return None


def _serve_details() -> dict[str, Any] | None:
    """Serve's instance details (ServeInstanceDetails as a dict), or None where no Serve runs."""
    import ray

    if not ray.is_initialized():  # a process without Ray (the unit tests): do not start one
        return None
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return client.get_serve_details() if client is not None else None


async def serve_replica_states(timeout_s: float | None = None) -> tuple[dict[str, list[ServeReplica]] | None, str | None]:
    """(each model application's live replicas as Serve knows them, None) or (None, why not)."""
    try:
        details = await asyncio.wait_for(asyncio.to_thread(_serve_details), timeout_s or SERVE_STATES_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - the controller restarting must not fail /status
        return None, f"Serve's controller did not give the replica states: {type(exc).__name__}"
    if details is None:
        return None, "no Serve controller runs"
    try:
        return serve_replicas(details, MODEL_DEPLOYMENT_NAME), None
    except Exception as exc:  # noqa: BLE001 - a schema this code does not know
        return None, f"Serve's replica details could not be read: {type(exc).__name__}"


def _model_status(gateway: Gateway, entry: ModelEntry, engine: dict[str, Any] | None, breakers: dict,
                  known: list[ServeReplica] | None, now: float) -> ModelStatus:
    info = entry.info
    replicas = merge_replicas(entry.placed, known, now)
    return ModelStatus(
        **entry.card(gateway.directory.runtime.get(entry.id)).model_dump(exclude={"replicas", "status"}),
        status=gateway.model_status(entry.status, entry.id),
        message=entry.message or None,
        source=info.source if info else None,
        max_model_len=info.max_model_len if info else None,
        revision=info.revision if info else None,
        estimated_bytes=(record.estimated_bytes if (record := gateway.directory.runtime.get(entry.id)) else None),
        circuit_breaker=breakers.get(entry.id, {"state": "closed"}),
        engine=engine,
        replicas=replicas,
        totals=totals(replicas),
    )


async def _nodes(gateway: Gateway) -> list[dict[str, Any]] | dict[str, str]:
    if gateway.node_reports is None:
        return []
    try:
        return await gateway.node_reports()
    except Exception as exc:  # noqa: BLE001 - the supervisor restarting must not fail /status
        return {"error": f"the hardware actors did not answer: {type(exc).__name__}"}


async def status_report(gateway: Gateway, uptime_s: float) -> dict[str, Any]:
    entries = sorted(gateway.directory.entries(), key=lambda e: e.id)
    nodes = asyncio.ensure_future(_nodes(gateway))
    states = asyncio.ensure_future(serve_replica_states())
    engines = await asyncio.gather(*(_engine_stats(entry) for entry in entries))
    try:
        shared = await gateway.state.status()
    except StateUnavailable:
        shared = {"error": "the state actor is restarting"}
    breakers = shared.get("breakers", {})
    known, why = await states
    now = time.time()
    return StatusReport(
        uptime_s=round(uptime_s, 1),
        models=[_model_status(gateway, entry, engine, breakers, None if known is None else known.get(entry.id, []), now)
                for entry, engine in zip(entries, engines, strict=True)],
        nodes=await nodes,
        cache=shared.get("cache"),
        state={"uptime_s": shared.get("uptime_s"), "settings": shared.get("settings"), "error": shared.get("error")},
        replica_state_error=why,
    ).model_dump(mode="json")
