"""Which models exist, whether they are ready, and how the ingress reaches them.

Model applications are discovered from Serve itself (every application whose deployments
include a ModelServer), so `serve deploy` of a config with one more model makes it routable
without touching the ingress. Each model's own `info()` supplies its task and load time.
The directory refreshes in the background; the request path only reads a dict.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from contract.errors import (
    GatewayTimeoutError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelStartingError,
    ServiceUnavailableError,
)
from contract.lifecycle import RuntimeModel
from contract.model_api import ModelClient, ModelInfo, ReplicaRecord
from contract.model_cards import ModelCard, ModelReplica, ModelStatus

logger = logging.getLogger("ray.serve")


@dataclass
class ModelEntry:
    id: str
    # ready | idle | loading | failed | unavailable; `card()` adds pending, the gateway circuit_*.
    status: ModelStatus
    message: str = ""
    info: ModelInfo | None = None
    client: ModelClient | None = None
    first_seen: int = field(default_factory=lambda: int(time.time()))
    # Replica ids seen answering info(), oldest first (bounded): a new one is a replacement.
    replicas: dict[str, None] = field(default_factory=dict)
    # Every live replica, as they report themselves to their nodes' hardware actors.
    placed: list[ReplicaRecord] = field(default_factory=list)
    # Seen with no replica while RUNNING (min_replicas 0): Serve may have scaled it to zero
    # since the last refresh, so a request after a quiet spell checks first (_wake).
    scales_to_zero: bool = False
    last_request: float = float("-inf")

    def card(self, runtime: RuntimeModel | None = None) -> ModelCard:
        """The model's card with every detail; `public_card` strips what only admins may see."""
        info = self.info
        status = "pending" if runtime is not None and runtime.state == "pending" and self.status == "loading" else self.status
        extra = {
            "loaded_at_runtime": True, "load_seconds": runtime.load_seconds,
            "error": runtime.error or (self.message or None if self.status == "failed" else None),
            "reason": runtime.reason or (FAILED_REASON if self.status == "failed" else None),
        } if runtime is not None else {  # a config-file model that failed, or waits with Serve saying why
            "error": self.message or None if self.status not in ("ready", "idle") else None,
            "reason": FAILED_REASON if self.status == "failed" else None}
        return ModelCard(
            **extra,
            id=self.id,
            created=info.created if info else self.first_seen,
            owned_by=info.owned_by if info else "hfserve",
            task=info.task if info else None,
            status=status,
            backend=info.backend if info else None,
            device=info.device if info else None,
            platform=info.platform or None if info else None,
            replicas=[
                ModelReplica(id=r.replica_id, node_id=r.node_id, node_ip=r.node_ip, hostname=r.hostname,
                             platform=r.platform, device=r.device)
                for r in self.placed
            ],
            capabilities=info.capabilities if info else None,
        )


def public_card(card: ModelCard) -> ModelCard:
    """What a caller without an admin key sees: the status and its short reason, never the
    error's detail (server paths, exception text)."""
    return card.model_copy(update={"error": None})


FAILED_REASON = "the model failed to load"


@dataclass(frozen=True)
class AppState:
    """One application as Serve reports it: a model, or (model=False) another application of
    the cluster, such as the ingress, whose name a run-time model may not take."""

    name: str
    status: str  # Serve's ApplicationStatus: RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, ...
    message: str = ""
    running: int | None = None  # RUNNING replicas; 0 in a RUNNING app is a model scaled to zero
    model: bool = True


# A model that scales to zero, not sent a request by this ingress for this long, is asked
# whether a replica is up (info(), milliseconds when one is) before a request is sent to it:
# otherwise a request landing just after Serve stopped its last replica would wait for the
# next one under request_timeout_s rather than model_load_timeout_s.
QUIET_BEFORE_WAKE_S = 2.0
RECOVERING_POLL_S = 0.5  # how often to look while a model is loading or unavailable
DEPLOYED_ARGS_TTL_S = 5.0  # how long the deployed config's args are trusted (a redeploy changes them)
_MAX_REPLICAS_REMEMBERED = 64

_SERVE_TO_MODEL_STATUS: dict[str, ModelStatus] = {
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
        wake_timeout_s: float = 300.0,
        deployed_args: Callable[[], Awaitable[dict[str, dict[str, Any]]]] | None = None,
    ):
        self._wake_timeout_s = wake_timeout_s
        # Config-file models' args as deployed: their fallbacks before a first replica answers.
        self._deployed_args = deployed_args
        self._deployed: tuple[float, dict[str, dict[str, Any]]] = (float("-inf"), {})
        self._deployed_lock = asyncio.Lock()
        self._waking: dict[str, asyncio.Future] = {}
        self._list_replicas = list_replicas
        self._placed: dict[str, list[ReplicaRecord]] = {}
        self._placing: asyncio.Task | None = None
        self._on_reload = on_reload
        self._on_new_replica = on_new_replica
        self.clock = self._clock = clock  # public: the gateway's other parts keep the same time
        self._list_apps = list_apps
        self._connect = connect
        self._ttl_s = ttl_s
        self._info_timeout_s = info_timeout_s
        self._entries: dict[str, ModelEntry] = {}
        self._refreshed_at = float("-inf")
        self._refresh_lock = asyncio.Lock()
        self._background: asyncio.Task | None = None
        # The run-time models' records (serve_app/state/lifecycle), as the state actor last sent them.
        self.runtime: dict[str, RuntimeModel] = {}
        self.runtime_version = 0
        self.other_apps: frozenset[str] = frozenset()  # Serve's applications that are not models
        # Model aliases: the ingress args' (fixed), and the run-time ones in the same snapshot as the records.
        self.config_aliases: dict[str, str] = {}
        self.runtime_aliases: dict[str, str] = {}

    def set_runtime(self, version: int, records: list[dict[str, Any]], aliases: dict[str, str] | None = None) -> None:
        self.runtime = {record.model: record for record in map(RuntimeModel.model_validate, records)}
        self.runtime_aliases = dict(aliases or {})
        self.runtime_version = version

    @property
    def aliases(self) -> dict[str, str]:
        return {**self.runtime_aliases, **self.config_aliases}

    def _runtime_state(self, model: str) -> str | None:
        record = self.runtime.get(model)
        return record.state if record is not None else None

    # ------------------------------------------------------------------ request path

    async def entry_for(self, model: str, endpoint: str, *, detail: bool = True,
                        wake_wait_s: float | None = None) -> ModelEntry:
        """The ready model behind `model`, or the 404 / 503 / 400 that explains why not: in
        detail (Serve's message, the loader's error) only when `detail` (an admin caller).
        `wake_wait_s`: the wait for a model scaled to zero (_wake), else model_load_timeout_s."""
        runtime_state = self._runtime_state(model)
        if runtime_state == "unloading":  # no new requests; the ones in flight drain
            raise ModelNotFoundError(model)
        entry = self._entries.get(model)
        if entry is None and runtime_state != "failed":
            # A model deployed a moment ago (this replica's last look at Serve may predate it,
            # while the state actor already calls it ready). The short max age bounds how often
            # a stream of requests for a model that does not exist can make us ask Serve again.
            await self.refresh(max_age_s=0.1)
            entry = self._entries.get(model)
        record = self.runtime.get(model)
        if runtime_state == "failed" or (entry is None and runtime_state in ("loading", "pending", "ready")):
            assert record is not None
            state = "failed" if runtime_state == "failed" else "loading"
            why = record.error if detail else record.reason or (FAILED_REASON if state == "failed" else None)
            raise ServiceUnavailableError(
                f"The model '{model}' is {state}{': ' + why if why else ''}.",
                code=f"model_{state}", retry_after_s=2 if state == "loading" else 30)
        if entry is None:
            raise ModelNotFoundError(model)
        if entry.status == "loading" and runtime_state == "ready":
            # The state actor saw Serve report it RUNNING after this replica last looked: look
            # again now rather than refuse a model that is ready.
            await self.refresh(max_age_s=0.1)
        if entry.client is not None and (entry.status == "idle" or self._may_be_at_zero(entry)):
            await self._wake(entry, wake_wait_s)
        entry.last_request = self._clock()
        if entry.status != "ready" or entry.client is None:
            # "unavailable" is a model that had replicas and lost them (Serve calls it UNHEALTHY, or
            # its replica died): the same 503 model_unavailable the breaker and a failed call give,
            # so that a client sees one code per fault whichever hop noticed it first.
            lost = entry.status == "unavailable"
            why = (record.error if record is not None and record.state == "pending" else entry.message) if detail else (
                record.reason if record is not None else None)
            raise ServiceUnavailableError(
                f"The model '{model}' is {entry.status}{': ' + why if why else ''}.",
                code="model_unavailable" if lost else "model_not_ready", retry_after_s=2 if lost else 5,
            )
        if entry.info is not None and endpoint not in entry.info.endpoints:
            raise InvalidRequestError(
                f"Model '{model}' is a {entry.info.task} model and does not support this endpoint.",
                param="model",
                code="model_not_supported",
            )
        return entry

    def _may_be_at_zero(self, entry: ModelEntry) -> bool:
        record = self.runtime.get(entry.id)
        scales = entry.scales_to_zero or bool(record and record.autoscaling and record.autoscaling.min_replicas == 0)
        return scales and self._clock() - entry.last_request > QUIET_BEFORE_WAKE_S

    async def _wake(self, entry: ModelEntry, wait_s: float | None = None) -> None:
        """A model scaled to zero: its first request starts a replica (Serve scales up for a
        request waiting at its handle); every request that arrives meanwhile waits on the same
        start, bounded by model_load_timeout_s, or by `wait_s` for a request that has somewhere
        else to go (then a ModelStartingError, and the start goes on)."""
        # A model only perhaps at zero answers in milliseconds when a replica is up: a second at least.
        bound = None if wait_s is None else wait_s if entry.status == "idle" else max(wait_s, 1.0)
        waking = self._waking.get(entry.id)
        if waking is None:
            waking = self._waking[entry.id] = asyncio.ensure_future(self._start_replica(entry))
            waking.add_done_callback(lambda done: self._woken(entry.id, done))
        try:
            await asyncio.wait_for(asyncio.shield(waking), bound)
        except TimeoutError:
            raise ModelStartingError(f"The model '{entry.id}' is scaled to zero and its replica is starting.",
                                     retry_after_s=max(1, math.ceil(bound or 0))) from None

    def _woken(self, model: str, done: asyncio.Future) -> None:
        self._waking.pop(model, None)
        if not done.cancelled():
            done.exception()  # seen: when every request waiting for it fell back, no one else looks

    async def _start_replica(self, entry: ModelEntry) -> None:
        assert entry.client is not None
        started = self._clock()
        try:
            info = await asyncio.wait_for(entry.client.info(), self._wake_timeout_s)
        except TimeoutError:
            raise GatewayTimeoutError(
                f"The model '{entry.id}' is scaled to zero and no replica started within {self._wake_timeout_s:g}s "
                "(model_load_timeout_s).") from None
        entry.info, entry.status, entry.message = info, "ready", ""
        await self._note_replica(entry, info.replica_id)
        logger.info("%s: scaled up from zero for a request in %.1fs", entry.id, self._clock() - started)

    async def cards(self) -> list[ModelCard]:
        await self.refresh(max_age_s=self._ttl_s)  # usually a no-op: the background loop keeps it fresh
        return [card for card in map(self._card, sorted(set(self._entries) | set(self.runtime))) if card is not None]

    async def card(self, model: str) -> ModelCard:
        await self.refresh(max_age_s=self._ttl_s)
        card = self._card(model)
        if card is None:
            raise ModelNotFoundError(model)
        return card

    def _card(self, model: str) -> ModelCard | None:
        """A model's card; None for one that does not exist or is being unloaded."""
        record = self.runtime.get(model)
        if record is not None and record.state == "unloading":
            return None
        entry = self._entries.get(model)
        if entry is not None and record is not None and entry.status == "failed":
            # Serve calls the application failed a moment before the state actor records why (it
            # reads the replica's error from the deployment, which Serve's application status
            # lacks): the record's state and reason are the ones to show.
            entry = None
        if entry is not None and (record is None or record.state != "failed"):
            return entry.card(record)
        if record is None:
            return None
        # Not (or no longer) a Serve application: being deployed (again, after a restart of the
        # cluster, for a record that was ready), failed (its application deleted, or about to be).
        status: ModelStatus = "failed" if record.state == "failed" else "loading"
        return ModelEntry(model, status, first_seen=int(record.requested_at)).card(record)

    async def declared(self, model: str) -> ModelInfo | dict[str, Any] | None:
        """A model's args as known here: what its replica said of itself, its run-time record's
        (None while it unloads), or a config-file model's as deployed (read again after
        DEPLOYED_ARGS_TTL_S); None when unknown."""
        entry, record = self._entries.get(model), self.runtime.get(model)
        if entry is not None and entry.info is not None:
            return entry.info
        if record is not None or entry is None or self._deployed_args is None:  # no controller call
            return record.args if record is not None and record.state != "unloading" else None
        async with self._deployed_lock:  # one controller call for the requests that arrive meanwhile
            read_at, args = self._deployed
            if self._clock() - read_at > DEPLOYED_ARGS_TTL_S:
                try:
                    args = await self._deployed_args()
                except Exception:  # noqa: BLE001 - the caller goes on without them
                    logger.warning("could not read the deployed models' args", exc_info=True)
                self._deployed = (self._clock(), args)
        return args.get(model)

    def status_of(self, model: str) -> ModelStatus | None:
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
        recovering = any(entry.status in ("loading", "unavailable") for entry in self._entries.values()) or any(
            record.state == "loading" for record in self.runtime.values())
        return min(self._ttl_s, RECOVERING_POLL_S) if recovering else self._ttl_s

    async def refresh(self, max_age_s: float = 0.0) -> None:
        async with self._refresh_lock:
            if self._clock() - self._refreshed_at < max_age_s:
                return
            listed = await self._list_apps()
            apps = [app for app in listed if app.model]
            self.other_apps = frozenset(app.name for app in listed if not app.model)
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
        if app.running == 0:  # scaled to zero: asking it for info() would start a replica
            entry.scales_to_zero = True
            if entry.client is None:
                entry.client = await self._connect(app.name)
            if entry.id not in self._waking:
                entry.status = "idle"
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
