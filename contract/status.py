"""The shape of /status, and the pure part of it: every replica of a model from two sources,
Serve's view (its state) and the replica's own report (node, counters), with the model's totals.
No Ray here: serve_app/ingress/status_report.py fetches both and assembles the answer."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict

from contract.model_api import EngineStats, ReplicaRecord

RUNNING = "RUNNING"
# A replica that reported itself but that Serve no longer lists among the live ones: its record
# lives on in its node's hardware actor until it expires (20 s) or the replica said goodbye.
STOPPED = "STOPPED"


class ServeReplica(BaseModel):
    """One live replica as Ray Serve knows it (an entry of the `replicas` of a deployment in
    ServeInstanceDetails, the schema of Serve's REST API `GET /api/serve/applications/`)."""

    model_config = ConfigDict(extra="ignore")

    replica_id: str
    state: str  # Serve's ReplicaState: STARTING, UPDATING, RECOVERING, RUNNING, STOPPING, ...
    pid: int | None = None
    node_id: str | None = None
    node_ip: str | None = None


class ReplicaStatus(BaseModel):
    replica_id: str
    state: str | None  # Serve's state of the replica; null when Serve did not answer
    node_id: str | None = None
    node_ip: str | None = None
    hostname: str | None = None
    pid: int | None = None
    platform: str | None = None
    backend: str | None = None
    device: str | None = None
    started_at: int | None = None
    # The replica's own report (every health check, 5 s): null until it has reported once.
    ongoing_requests: int | None = None
    rss_bytes: int | None = None  # resident memory of the replica's process, at its last report
    engine: EngineStats | None = None
    reported_s_ago: float | None = None


class ReplicaTotals(BaseModel):
    replicas: int  # live replicas (stopped ones whose report has not expired are not counted)
    ready: int  # RUNNING in Serve's eyes; when Serve did not answer, those that report
    by_state: dict[str, int]  # "unknown" for replicas whose state Serve did not give
    ongoing_requests: int
    running_requests: int
    waiting_requests: int
    rss_bytes: int | None = None  # the live replicas' resident memory, summed (null before they report)


class ModelStatus(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str
    task: str | None = None
    status: str  # ready | idle | loading | failed | unavailable | circuit_open
    backend: str | None = None
    device: str | None = None
    platform: str | None = None
    message: str | None = None
    source: str | None = None
    max_model_len: int | None = None
    revision: str | None = None
    # Run-time models (POST /models/load): the load's time, its error, and the weights' memory
    # estimated before loading (totals.rss_bytes is what the replicas really hold).
    loaded_at_runtime: bool = False
    load_seconds: float | None = None
    error: str | None = None
    estimated_bytes: int | None = None
    circuit_breaker: dict[str, Any]
    engine: EngineStats | None = None  # live counters of the replica that answered now
    replicas: list[ReplicaStatus]
    totals: ReplicaTotals


class StatusReport(BaseModel):
    uptime_s: float
    models: list[ModelStatus]
    nodes: list[dict[str, Any]] | dict[str, str]  # every node's hardware report, or why none
    cache: dict[str, Any] | None = None
    state: dict[str, Any]
    # Why replica states are null (Serve's controller did not answer in time, say); else null.
    replica_state_error: str | None = None


def _from_record(record: ReplicaRecord, state: str | None, now: float) -> ReplicaStatus:
    reported_at: float | None = getattr(record, "reported_at", None)  # when the record carries it
    return ReplicaStatus(
        replica_id=record.replica_id, state=state, node_id=record.node_id, node_ip=record.node_ip,
        hostname=record.hostname, pid=record.pid, platform=record.platform, backend=record.backend,
        device=record.device, started_at=record.started_at, ongoing_requests=record.ongoing_requests,
        rss_bytes=getattr(record, "rss_bytes", None),
        engine=record.engine, reported_s_ago=round(max(0.0, now - reported_at), 1) if reported_at else None,
    )


def merge_replicas(placed: list[ReplicaRecord], known: list[ServeReplica] | None, now: float) -> list[ReplicaStatus]:
    """Every replica of one model: those Serve knows (`known`, None when Serve did not answer)
    with what they reported, those that have not reported yet with null counters, and those
    that reported but that Serve no longer lists as STOPPED. `now` is Unix time."""
    if known is None:
        return [_from_record(record, None, now) for record in placed]
    reports = {record.replica_id: record for record in placed}
    replicas = []
    for serve in known:
        record = reports.pop(serve.replica_id, None)
        if record is not None:
            replicas.append(_from_record(record, serve.state, now))
        else:  # starting: Serve knows where it runs before it reports
            replicas.append(ReplicaStatus(replica_id=serve.replica_id, state=serve.state, node_id=serve.node_id,
                                          node_ip=serve.node_ip, pid=serve.pid))
    replicas.extend(_from_record(record, STOPPED, now) for record in reports.values())
    return sorted(replicas, key=lambda r: (r.state == STOPPED, r.hostname or r.node_ip or "", r.replica_id))


def totals(replicas: list[ReplicaStatus]) -> ReplicaTotals:
    live = [r for r in replicas if r.state != STOPPED]
    engines = [r.engine for r in live if r.engine is not None]
    return ReplicaTotals(
        replicas=len(live),
        ready=sum(1 for r in live if r.state == RUNNING or (r.state is None and r.engine is not None)),
        by_state=dict(Counter(r.state or "unknown" for r in replicas)),
        ongoing_requests=sum(r.ongoing_requests or 0 for r in live),
        running_requests=sum(e.running_requests for e in engines),
        waiting_requests=sum(e.waiting_requests for e in engines),
        rss_bytes=sum(r.rss_bytes for r in live if r.rss_bytes) or None,
    )


def serve_replicas(details: dict[str, Any], deployment: str) -> dict[str, list[ServeReplica]]:
    """Each application's live replicas of `deployment`, from Serve's instance details."""
    found: dict[str, list[ServeReplica]] = {}
    for name, app in (details.get("applications") or {}).items():
        target = (app.get("deployments") or {}).get(deployment)
        if target is not None:
            found[name] = [ServeReplica.model_validate(r) for r in target.get("replicas") or []]
    return found
