"""Which models exist, whether they are ready, and how the ingress reaches them.

Model applications are discovered from Serve itself (every application whose deployments
include a ModelServer), so `serve deploy` of a config with one more model makes it routable
without touching the ingress. Each model's own `info()` supplies its task and load time.
The directory refreshes in the background; the request path only reads a dict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from contract.config import MODEL_DEPLOYMENT_NAME
from contract.errors import InvalidRequestError, ModelNotFoundError, ServiceUnavailableError
from contract.model_api import ModelClient, ModelInfo, NotStartedInTime, ReplicaRecord
from contract.protocol import ModelCard, ModelReplica

logger = logging.getLogger("ray.serve")


@dataclass
class ModelEntry:
    id: str
    status: str  # ready | loading | failed | unavailable
    message: str = ""
    info: ModelInfo | None = None
    client: ModelClient | None = None
    first_seen: int = field(default_factory=lambda: int(time.time()))
    # Replica ids seen answering info(), oldest first (bounded): a new one is a replacement.
    replicas: dict[str, None] = field(default_factory=dict)
    # Every live replica, as they report themselves to their nodes' hardware actors.
    placed: list[ReplicaRecord] = field(default_factory=list)

    def card(self) -> ModelCard:
        info = self.info
        return ModelCard(
            id=self.id,
            created=info.created if info else self.first_seen,
            owned_by=info.owned_by if info else "hfserve",
            task=info.task if info else None,
            status=self.status,  # type: ignore[arg-type]
            backend=info.backend if info else None,
            device=info.device if info else None,
            platform=info.platform or None if info else None,
            replicas=[
                ModelReplica(id=r.replica_id, node_id=r.node_id, node_ip=r.node_ip, hostname=r.hostname,
                             platform=r.platform, device=r.device)
                for r in self.placed
            ],
        )


@dataclass(frozen=True)
class AppState:
    """One model application as Serve reports it."""

    name: str
    status: str  # Serve's ApplicationStatus: RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, ...
    message: str = ""


RECOVERING_POLL_S = 0.5  # how often to look while a model is loading or unavailable
_MAX_REPLICAS_REMEMBERED = 64

_SERVE_TO_MODEL_STATUS = {
    "RUNNING": "ready",
    "DEPLOYING": "loading",
    "NOT_STARTED": "loading",
    "DEPLOY_FAILED": "failed",
    "UNHEALTHY": "unavailable",
    "DELETING": "unavailable",
}


class ModelDirectory:
    def __init__(
        self,
        list_apps: Callable[[], Awaitable[list[AppState]]],
        connect: Callable[[str], Awaitable[ModelClient]],
        *,
        ttl_s: float = 2.0,
        info_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_reload: Callable[[str], Awaitable[Any]] | None = None,
        on_new_replica: Callable[[str], Awaitable[Any]] | None = None,
        list_replicas: Callable[[], Awaitable[list[ReplicaRecord]]] | None = None,
    ):
        self._list_replicas = list_replicas
        self._placed: dict[str, list[ReplicaRecord]] = {}
        self._placing: asyncio.Task | None = None
        self._on_reload = on_reload
        self._on_new_replica = on_new_replica
        self._clock = clock
        self._list_apps = list_apps
        self._connect = connect
        self._ttl_s = ttl_s
        self._info_timeout_s = info_timeout_s
        self._entries: dict[str, ModelEntry] = {}
        self._refreshed_at = float("-inf")
        self._refresh_lock = asyncio.Lock()
        self._background: asyncio.Task | None = None

    # ------------------------------------------------------------------ request path

    async def entry_for(self, model: str, endpoint: str) -> ModelEntry:
        """The ready model behind `model`, or the 404 / 503 / 400 that explains why not."""
        entry = self._entries.get(model)
        if entry is None:
            # A model deployed a moment ago. The short max age bounds how often a stream of
            # requests for a model that does not exist can make us ask Serve again.
            await self.refresh(max_age_s=0.1)
            entry = self._entries.get(model)
        if entry is None:
            raise ModelNotFoundError(model)
        if entry.status != "ready" or entry.client is None:
            raise ServiceUnavailableError(
                f"The model '{model}' is {entry.status}{': ' + entry.message if entry.message else ''}."
            )
        if entry.info is not None and endpoint not in entry.info.endpoints:
            raise InvalidRequestError(
                f"Model '{model}' is a {entry.info.task} model and does not support this endpoint.",
                param="model",
                code="model_not_supported",
            )
        return entry

    async def cards(self) -> list[ModelCard]:
        await self.refresh(max_age_s=self._ttl_s)  # usually a no-op: the background loop keeps it fresh
        return [entry.card() for entry in sorted(self._entries.values(), key=lambda e: e.id)]

    async def card(self, model: str) -> ModelCard:
        await self.refresh(max_age_s=self._ttl_s)
        entry = self._entries.get(model)
        if entry is None:
            raise ModelNotFoundError(model)
        return entry.card()

    def status_of(self, model: str) -> str | None:
        entry = self._entries.get(model)
        return entry.status if entry else None

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    # ------------------------------------------------------------------ refresh

    def start(self) -> None:
        if self._background is None:
            loop = asyncio.get_running_loop()
            self._background = loop.create_task(self._refresh_forever())
            if self._list_replicas is not None:
                self._placing = loop.create_task(self._replicas_forever())

    async def stop(self) -> None:
        tasks = [task for task in (self._background, self._placing) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:  # bounded, as the gateway's: a task that missed its cancel must not hang shutdown
            await asyncio.wait(tasks, timeout=2.0)
        self._background = self._placing = None

    async def refresh_replicas(self) -> None:
        """Where every replica runs. Its own loop: a dead node's actor that does not answer must
        not slow down noticing a model's recovery."""
        assert self._list_replicas is not None
        placed: dict[str, list[ReplicaRecord]] = {}
        for record in await self._list_replicas():
            placed.setdefault(record.model, []).append(record)
        self._placed = {model: sorted(records, key=lambda r: (r.hostname or "", r.replica_id)) for model, records in placed.items()}
        for entry in self._entries.values():
            entry.placed = self._placed.get(entry.id, [])

    async def _replicas_forever(self) -> None:
        while True:
            try:
                await self.refresh_replicas()
            except Exception:  # noqa: BLE001 - /status shows the last known placement
                logger.warning("could not list the replicas from the hardware actors", exc_info=True)
            # A model that is ready but not yet placed: its replicas report within a moment.
            unplaced = any(entry.status == "ready" and not entry.placed for entry in self._entries.values())
            await asyncio.sleep(min(self._ttl_s, RECOVERING_POLL_S) if unplaced else self._ttl_s)

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh(max_age_s=min(self._ttl_s / 2, RECOVERING_POLL_S / 2))
            except Exception:  # noqa: BLE001 - keep serving the last known state
                logger.exception("model directory refresh failed")
            await asyncio.sleep(self._poll_period())

    def _poll_period(self) -> float:
        # While a model loads or has lost its replica, look often: its replacement is noticed
        # (and its breaker let probe) within RECOVERING_POLL_S of Serve reporting it healthy.
        recovering = any(entry.status in ("loading", "unavailable") for entry in self._entries.values())
        return min(self._ttl_s, RECOVERING_POLL_S) if recovering else self._ttl_s

    async def refresh(self, max_age_s: float = 0.0) -> None:
        async with self._refresh_lock:
            if self._clock() - self._refreshed_at < max_age_s:
                return
            apps = await self._list_apps()
            entries = {
                app.name: self._entries.get(app.name) or ModelEntry(app.name, "loading", placed=self._placed.get(app.name, []))
                for app in apps
            }
            await asyncio.gather(*(self._update(entries[app.name], app) for app in apps))
            self._entries = entries
            self._refreshed_at = self._clock()

    async def _update(self, entry: ModelEntry, app: AppState) -> None:
        status = _SERVE_TO_MODEL_STATUS.get(app.status, "unavailable")
        entry.message = app.message if status != "ready" else ""
        if status != "ready":
            entry.status = status
            return
        try:
            if entry.client is None:
                entry.client = await self._connect(app.name)
            info = await asyncio.wait_for(entry.client.info(), self._info_timeout_s)
            reloaded = entry.info is not None and info.revision != entry.info.revision
            # Ready before the hooks run: a request arriving while they await must not find the
            # model still "unavailable" and report a failure that re-opens the breaker the new
            # replica is about to set half-open.
            entry.info, entry.status = info, "ready"
            if reloaded and self._on_reload is not None:
                await self._on_reload(entry.id)  # a new version of the model: drop what the old one answered
            await self._note_replica(entry, info.replica_id)
        except Exception as exc:  # noqa: BLE001 - what the failure says decides
            if entry.info is not None and not _replica_died(exc):
                # Busy, not gone: slow to answer on a loaded machine, or its queue full (Ray's
                # BackPressureError), is still the model Serve reports RUNNING. A dead replica
                # Serve reports itself; one lost with its node, the requests' own timeouts find.
                entry.status = "ready"
                return
            if entry.info is None and not _replica_died(exc):  # RUNNING, but not heard from yet
                entry.status, entry.message = "loading", f"waiting for the model's first answer ({type(exc).__name__})"
                return
            entry.status = "unavailable"
            entry.message = f"no answer from the model: {type(exc).__name__}"


    async def _note_replica(self, entry: ModelEntry, replica_id: str) -> None:
        if not replica_id or replica_id in entry.replicas:
            return
        if entry.replicas and self._on_new_replica is not None:
            # A healthy replica this ingress has not seen: a replacement or a scale-up.
            await self._on_new_replica(entry.id)
        entry.replicas[replica_id] = None
        while len(entry.replicas) > _MAX_REPLICAS_REMEMBERED:
            entry.replicas.pop(next(iter(entry.replicas)))


def _replica_died(exc: BaseException) -> bool:
    from ray import exceptions

    return isinstance(exc, exceptions.RayActorError | exceptions.ActorUnavailableError)


# ----------------------------------------------------------------------------- Ray Serve


class ServeModelClient:
    """ModelClient over a DeploymentHandle to a model application."""

    def __init__(self, handle: Any):
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
    from ray import serve

    status = await asyncio.to_thread(serve.status)
    return [
        AppState(name, _status(app),
                 # A replica that cannot be scheduled is explained on the deployment, not the app.
                 app.message or (app.deployments[MODEL_DEPLOYMENT_NAME].message if app.deployments else "") or "")
        for name, app in status.applications.items()
        # A model application whose builder failed (hardware no node has, say) has no
        # deployments at all; it is listed as failed, with the reason, rather than hidden.
        if MODEL_DEPLOYMENT_NAME in app.deployments or (not app.deployments and _status(app) == "DEPLOY_FAILED")
    ]


def _status(app: Any) -> str:
    return app.status.value if hasattr(app.status, "value") else str(app.status)


async def list_serve_replicas(supervisor: Any) -> list[ReplicaRecord]:
    """Every model replica of the cluster, from the per-node hardware actors' records."""
    records = await asyncio.wait_for(supervisor.replicas.remote(), 5.0)
    return [ReplicaRecord.model_validate(record) for record in records]


async def connect_serve_model(name: str) -> ServeModelClient:
    from ray import serve

    # get_app_handle asks the controller synchronously; keep that off the event loop.
    return ServeModelClient(await asyncio.to_thread(serve.get_app_handle, name))
