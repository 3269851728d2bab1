"""The gateway's object graph: the model directory, its hooks into the state, and the gateway
over both. The Ingress deployment builds it over Ray Serve (serve_models.py) and the unit
tests over their fakes; what differs between the two is passed in."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from contract.ingress_args import IngressArgs
from contract.model_api import ModelClient, ReplicaRecord
from observability.recorder import Recorder
from serve_app.ingress.gateway import Gateway
from serve_app.ingress.model_directory import AppState, ModelDirectory
from serve_app.state.client import StateClient, StateUnavailable


def build_gateway(
    args: IngressArgs,
    state: StateClient,
    *,
    list_apps: Callable[[], Awaitable[list[AppState]]],
    connect: Callable[[str], Awaitable[ModelClient]],
    list_replicas: Callable[[], Awaitable[list[ReplicaRecord]]] | None = None,
    node_reports: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    metrics: Recorder | None = None,
    deployed_args: Callable[[], Awaitable[dict[str, dict[str, Any]]]] | None = None,
) -> Gateway:
    """The gateway over a model directory that lists and connects the model applications
    with `list_apps` and `connect`, and tells the state when a model changes under it."""
    directory = ModelDirectory(
        list_apps,
        connect,
        ttl_s=args.model_info_ttl_s,
        info_timeout_s=args.readiness_timeout_s,
        clock=clock,
        # A new version of a model drops what the old one answered; a new replica lets its
        # breaker probe at once. Neither may fail a refresh when the state does not answer.
        on_reload=lambda model: _quietly(state.cache_invalidate(model)),
        on_new_replica=lambda model: _quietly(state.breaker_replaced(model)),
        list_replicas=list_replicas,
        wake_timeout_s=args.model_load_timeout_s,
        deployed_args=deployed_args,
    )
    directory.config_aliases = dict(args.aliases)
    return Gateway(args, state, directory, node_reports=node_reports, metrics=metrics)


async def _quietly(call: Awaitable[Any]) -> None:
    with contextlib.suppress(StateUnavailable):
        await call
