"""The model directory's Ray Serve side: a ModelClient over a model application's
DeploymentHandle, and the model applications, their replicas and their states as Serve and
the hardware actors report them (serve_app/ingress/model_directory.py is the Serve-free logic)."""

from __future__ import annotations

import asyncio
from typing import Any

from contract.config import MODEL_DEPLOYMENT_NAME
from contract.model_api import NotStartedInTime, ReplicaRecord
from serve_app import config_overrides
from serve_app.ingress.model_directory import AppState
from serve_app.state.lifecycle.reconciler import failure_summary


class ServeModelClient:
    """ModelClient over a DeploymentHandle to a model application.

    `over_grpc` sends the calls over the gRPC server every Serve replica runs for calls between
    deployments (`_by_reference=False`, what Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED turns on for
    every handle) instead of as Ray actor tasks: no object references to create, track and free
    per call, so less CPU on both sides (docs/performance.md, "Levers";
    bench/results/levers-2026-11-29.json, `grpc-ab-*`). Nothing we send needs to be a reference:
    requests and answers are small pydantic objects passed by value anyway."""

    def __init__(self, handle: Any, over_grpc: bool = True):
        if over_grpc:
            handle = handle.options(_by_reference=False)
        self._handle = handle
        self._streaming = handle.options(stream=True)

    async def chat(self, request):
        return await self._handle.chat.remote(request)

    def chat_stream(self, request):
        return self._streaming.chat_stream.remote(request)

    async def complete(self, request):
        return await self._handle.complete.remote(request)

    def complete_stream(self, request):
        return self._streaming.complete_stream.remote(request)

    async def embed(self, request):
        return await self._handle.embed.remote(request)

    async def tokenize(self, request):
        return await self._handle.tokenize.remote(request)

    async def detokenize(self, request):
        return await self._handle.detokenize.remote(request)

    async def call_with_progress(self, method, request, timeout_s, on_start=None):
        # Heartbeats come four times per timeout (at most every 2 s), so one late beat on a
        # busy replica is not mistaken for a dead one.
        stream = self._streaming.call_with_heartbeats.remote(method, request, min(2.0, timeout_s / 4))
        started = False
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout_s):
                        item = await stream.__anext__()
                except TimeoutError:
                    if not started:
                        raise NotStartedInTime(f"no replica started '{method}' within {timeout_s:g}s") from None
                    raise
                if item is not None:
                    return item
                if not started and on_start is not None:
                    on_start()
                started = True
        except StopAsyncIteration:
            raise RuntimeError(f"the model ended '{method}' without an answer") from None
        except BaseException:
            stream.cancel()
            raise

    async def info(self):
        return await self._handle.info.remote()

    async def stats(self):
        return await self._handle.stats.remote()


async def list_serve_model_apps() -> list[AppState]:
    """Serve's model applications, and its other applications (the ingress) as model=False."""
    from ray import serve

    status = await asyncio.to_thread(serve.status)
    # An application whose builder is still running has no deployments yet: whether it is a
    # model only its config says (a model of serve_config.yaml being built at start-up must
    # count as loading, or /ready would answer for the models that happen to be listed).
    building = [name for name, app in status.applications.items() if not app.deployments and _status(app) == "DEPLOYING"]
    building_models = await asyncio.to_thread(_model_apps_among, building) if building else set()
    return [
        AppState(name, _status(app),
                 # A failed build says why in its traceback's last error line; a replica that cannot
                 # be scheduled is explained on the deployment, not the app.
                 failure_summary(app.message) if app.message and _status(app) == "DEPLOY_FAILED"
                 else app.message or (app.deployments[MODEL_DEPLOYMENT_NAME].message
                                      if MODEL_DEPLOYMENT_NAME in app.deployments else "") or "",
                 _running(app),
                 # A model application whose builder failed (hardware no node has, say) has no
                 # deployments at all; it is listed as failed, with the reason, rather than hidden.
                 model=MODEL_DEPLOYMENT_NAME in app.deployments or (not app.deployments and _status(app) == "DEPLOY_FAILED")
                 or name in building_models)
        for name, app in status.applications.items()
    ]


def _model_apps_among(names: list[str]) -> set[str]:
    """Those of `names` that serve_config.yaml deploys with the model builder."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    details = client.get_serve_details() if client is not None else {}
    found = set()
    for name in names:
        config = ((details.get("applications") or {}).get(name) or {}).get("deployed_app_config") or {}
        if isinstance(config, dict) and str(config.get("import_path", "")).endswith(":build_model_app"):
            found.add(name)
    return found


def _running(app: Any) -> int | None:
    deployment = app.deployments.get(MODEL_DEPLOYMENT_NAME) if app.deployments else None
    if deployment is None:
        return None
    return sum(count for state, count in deployment.replica_states.items() if getattr(state, "value", state) == "RUNNING")


def _status(app: Any) -> str:
    return app.status.value if hasattr(app.status, "value") else str(app.status)


async def deployed_model_args() -> dict[str, dict[str, Any]]:
    """Each config-file model's args as Serve deployed them (the controller's copy of the config)."""
    return await asyncio.to_thread(config_overrides.deployed_model_args)


async def list_serve_replicas(supervisor: Any) -> list[ReplicaRecord]:
    """Every model replica of the cluster, from the per-node hardware actors' records."""
    records = await asyncio.wait_for(supervisor.replicas.remote(), 5.0)
    return [ReplicaRecord.model_validate(record) for record in records]


async def connect_serve_model(name: str, over_grpc: bool = True) -> ServeModelClient:
    from ray import serve

    # get_app_handle asks the controller synchronously; keep that off the event loop.
    return ServeModelClient(await asyncio.to_thread(serve.get_app_handle, name), over_grpc=over_grpc)
