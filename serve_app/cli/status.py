"""`hfserve status [--json] [--url URL]`: a running server's /status, fetched with the admin key
(HF_SERVER_API_KEY or <state_dir>/admin.key, as `hfserve keys --url`), as a table or as JSON.

The table: one line per model, under it one line per replica, then the nodes, the response
cache and the state actor. Plain text; a missing value is "-"."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

DASH = "-"


def run(args: argparse.Namespace) -> int:
    from serve_app.cli.keys import AdminApi

    report = AdminApi(args.url)("GET", "/status")
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _columns(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Rows of cells, each column as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))).rstrip() for row in rows]


def _num(value: Any) -> str:
    return DASH if value is None else str(value)


def _pair(a: Any, b: Any) -> str:
    return DASH if a is None and b is None else f"{_num(a)}/{_num(b)}"


def _percent(fraction: float | None) -> str:
    return DASH if fraction is None else f"{fraction * 100:.0f}%"


def _where(hostname: str | None, ip: str | None) -> str:
    if hostname and ip:
        return f"{hostname} ({ip})"
    return hostname or ip or DASH


MODEL_HEADER = ("MODEL", "STATUS", "BACKEND/PLATFORM", "READY", "ONGOING", "RUN/WAIT", "BREAKER")
REPLICA_HEADER = ("REPLICA", "NODE", "STATE", "PID", "ONGOING", "RUN/WAIT", "KV CACHE")


def _model_row(model: dict[str, Any]) -> tuple[str, ...]:
    totals = model.get("totals") or {}
    replicas = model.get("replicas") or []
    backend = "/".join(part for part in (model.get("backend"), model.get("platform")) if part) or DASH
    breaker = (model.get("circuit_breaker") or {}).get("state", DASH)
    return (
        model["id"], model.get("status") or DASH, backend,
        f"{totals.get('ready', 0)}/{totals.get('replicas', len(replicas))}",
        _num(totals.get("ongoing_requests")), _pair(totals.get("running_requests"), totals.get("waiting_requests")),
        breaker,
    )


def _replica_row(replica: dict[str, Any]) -> tuple[str, ...]:
    engine = replica.get("engine") or {}
    return (
        replica["replica_id"][:8], _where(replica.get("hostname"), replica.get("node_ip")), replica.get("state") or "unknown",
        _num(replica.get("pid")), _num(replica.get("ongoing_requests")),
        _pair(engine.get("running_requests"), engine.get("waiting_requests")), _percent(engine.get("kv_cache_usage")),
    )


def _models(report: dict[str, Any]) -> list[str]:
    models = report.get("models") or []
    if not models:
        return ["no models are deployed"]
    model_lines = _columns([MODEL_HEADER, *(_model_row(m) for m in models)])
    replica_rows = [_replica_row(r) for m in models for r in m.get("replicas") or []]
    replica_lines = iter(_columns([REPLICA_HEADER, *replica_rows], indent="  "))
    lines = [model_lines[0]]
    if replica_rows:
        lines.append(next(replica_lines))
    for model, line in zip(models, model_lines[1:], strict=True):
        lines.append(line)
        if model.get("message"):
            lines.append(f"  ! {model['message']}")
        lines.extend(next(replica_lines) for _ in model.get("replicas") or [])
    if report.get("replica_state_error"):
        lines.append(f"(replica states unknown: {report['replica_state_error']})")
    return lines


def _nodes(nodes: list[dict[str, Any]] | dict[str, str] | None) -> list[str]:
    if isinstance(nodes, dict):
        return [f"nodes: {nodes.get('error', 'unknown')}"]
    if not nodes:
        return ["nodes: none reported"]
    rows = [("NODE", "IP", "PLATFORMS")]
    for node in sorted(nodes, key=lambda n: n.get("hostname") or ""):
        platforms = [name for name, p in (node.get("platforms") or {}).items() if p.get("available")]
        rows.append((node.get("hostname") or DASH, node.get("node_ip") or DASH, ", ".join(platforms) or DASH))
    return _columns(rows)


def _cache(cache: dict[str, Any] | None) -> str:
    if not cache:
        return "cache: -"
    hits, misses = cache.get("hits", 0), cache.get("misses", 0)
    rate = f"{hits / (hits + misses) * 100:.0f}%" if hits + misses else DASH
    size = cache.get("bytes")
    return (f"cache: {_num(cache.get('entries'))} entries, {DASH if size is None else f'{size / 2**20:.1f} MiB'}, "
            f"{hits} hits / {misses} misses (hit rate {rate})")


def _state(state: dict[str, Any] | None) -> str:
    state = state or {}
    if state.get("error"):
        return f"state actor: {state['error']}"
    uptime = state.get("uptime_s")
    return f"state actor: up {DASH if uptime is None else f'{uptime:.0f} s'}"


def render(report: dict[str, Any]) -> str:
    uptime = report.get("uptime_s")
    lines = [f"hfserve up {DASH if uptime is None else f'{uptime:.0f} s'}", ""]
    lines += _models(report)
    lines += ["", *_nodes(report.get("nodes")), "", _cache(report.get("cache")), _state(report.get("state"))]
    return "\n".join(lines)
