"""The shared state of every ingress replica: API keys, rate-limit windows, the response
cache and the circuit breakers, in one named, detached Ray actor.

`StateCore` is plain Python (unit-tested directly); `StateActor` runs it in Ray with
``max_restarts=-1``. What survives a restart: keys (SQLite under the state directory). What
does not: the cache (it refills), breakers (they restart closed), and the current rate
windows (at most one window of quota is forgotten). Ingress replicas keep local copies so
the actor stays off most requests' critical path, and degrade to those copies while it
restarts (see ingress/gateway/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from contract.errors import ConflictError
from contract.ingress_args import IngressArgs
from contract.lifecycle import RuntimeModel
from observability import catalogue
from observability.recorder import Recorder
from serve_app.state.budgets import BudgetBook
from serve_app.state.circuit_breaker import CircuitBreaker, Snapshot
from serve_app.state.keys import (
    KeyRecord,
    KeyStore,
    KeyStoreWriteError,
    KeyUpdate,
    KeyUsage,
    NewKey,
    ensure_admin_key,
)
from serve_app.state.lifecycle.admission import plan_evictions
from serve_app.state.lifecycle.store import RuntimeModelStore
from serve_app.state.rate_limiter import Grant, Limits, RateLimiter
from serve_app.state.response_cache import ResponseCache
from serve_app.state.teams import (
    KeyWithTeam,
    NewTeam,
    TeamMembers,
    TeamRecord,
    TeamStore,
    TeamUpdate,
)
from serve_app.state.usage_book import DailyUsage, GroupBy, UsageBook

logger = logging.getLogger("ray.serve")

GAUGE_PERIOD_S = 1.0  # how often the syncs refresh this actor's gauges


class StateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path
    static_admin: bool = False
    cache_max_entries: int = 1000
    cache_max_bytes: int = 64 * 1024 * 1024
    cache_ttl_s: float = 3600.0
    breaker_threshold: int = 5
    breaker_timeout_s: float = 60.0

    @classmethod
    def from_args(cls, args: IngressArgs) -> StateSettings:
        return cls(
            state_dir=args.effective_state_dir,
            static_admin=args.static_admin_key_sha256 is not None,
            cache_max_entries=args.cache_max_size,
            cache_max_bytes=args.cache_max_bytes,
            cache_ttl_s=args.cache_ttl_s,
            breaker_threshold=args.circuit_breaker_threshold,
            breaker_timeout_s=args.circuit_breaker_timeout_s,
        )


class StateCore:
    def __init__(self, settings: StateSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._clock = clock
        self.store = KeyStore(settings.state_dir / "keys.db")
        self.admin_key_path = None
        try:
            self.admin_key_path = ensure_admin_key(self.store, settings.state_dir, settings.static_admin)
        except KeyStoreWriteError as exc:  # serve with the keys there are; writes say why they fail
            logger.error("could not create an admin API key: %s", exc.message)
        if self.admin_key_path:
            logger.warning("created an admin API key: %s", self.admin_key_path)
        if self.store.read_only:
            logger.warning("the key store %s is on a read-only file system: keys are served, not written", self.store.path)
        self.teams = TeamStore(self.store)
        self.limiter = RateLimiter(clock, budgets=BudgetBook(self._budget_spent, self._save_budget_spent, time.time))
        self.cache = ResponseCache(
            max_entries=settings.cache_max_entries,
            max_bytes=settings.cache_max_bytes,
            ttl_s=settings.cache_ttl_s,
            clock=clock,
        )
        self.breakers: dict[str, CircuitBreaker] = {}
        self.models = RuntimeModelStore(settings.state_dir / "keys.db")
        self.usage = UsageBook(settings.state_dir / "keys.db")
        self.started = time.time()
        # Gauges of what only this actor knows (off the request path, so always recorded).
        self.metrics = Recorder()
        self._gauges_at = float("-inf")
        self.record_gauges()

    # ------------------------------------------------------------------ settings

    def configure(self, settings: StateSettings) -> list[str]:
        """Settings of a redeployed ingress, applied to the running actor (which outlives
        deploys). Returns the names of the settings that changed; each is logged."""
        changed = [name for name in StateSettings.model_fields if getattr(settings, name) != getattr(self.settings, name)]
        if not changed:
            return []
        if "state_dir" in changed:
            self.models = RuntimeModelStore(settings.state_dir / "keys.db")
            self.usage = UsageBook(settings.state_dir / "keys.db")
        if "state_dir" in changed or "static_admin" in changed:
            self.store.close()
            self.store = KeyStore(settings.state_dir / "keys.db")
            self.teams = TeamStore(self.store)
            try:
                ensure_admin_key(self.store, settings.state_dir, settings.static_admin)
            except KeyStoreWriteError as exc:
                logger.error("could not create an admin API key: %s", exc.message)
        self.cache.max_entries, self.cache.max_bytes = settings.cache_max_entries, settings.cache_max_bytes
        self.cache.ttl_s = settings.cache_ttl_s
        self.cache.trim()
        for breaker in self.breakers.values():
            breaker.threshold, breaker.timeout_s = settings.breaker_threshold, settings.breaker_timeout_s
        self.settings = settings
        logger.warning("shared state: new settings from a redeploy: %s", ", ".join(changed))
        return changed

    # ------------------------------------------------------------------ keys

    def find_key(self, digest: str) -> KeyWithTeam | None:
        """The key with this digest, and its team if it is in one."""
        record = self.store.find(digest)
        if record is None:
            return None
        return KeyWithTeam(key=record, team=self.teams.get(record.team_id) if record.team_id else None)

    def create_key(self, new: NewKey) -> tuple[str, KeyRecord]:
        return self.store.create(new)

    def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]:
        return self.store.list(include_revoked)

    def get_key(self, key_id: str) -> KeyRecord | None:
        return self.store.get(key_id, include_revoked=False)

    def update_key(self, key_id: str, update: KeyUpdate) -> KeyRecord | None:
        return self.store.update(key_id, update)

    def revoke_key(self, key_id: str) -> KeyRecord | None:
        # A static admin key (HF_SERVER_API_KEY) outlives every stored one: then none is the last.
        return self.store.revoke(key_id, keep_an_admin=not self.settings.static_admin)

    def add_usage(self, usage: dict[str, KeyUsage]) -> None:
        self.store.add_usage(usage)

    # ------------------------------------------------------------------ teams

    def create_team(self, new: NewTeam) -> TeamRecord:
        return self.teams.create(new)

    def list_teams(self) -> list[TeamRecord]:
        return self.teams.list()

    def get_team(self, team_id: str) -> TeamRecord | None:
        return self.teams.get(team_id)

    def update_team(self, team_id: str, update: TeamUpdate) -> TeamRecord | None:
        return self.teams.update(team_id, update)

    def delete_team(self, team_id: str) -> TeamRecord | None:
        return self.teams.delete(team_id)

    def add_team_keys(self, team_id: str, members: TeamMembers) -> TeamRecord | None:
        return self.teams.add_keys(team_id, members.keys)

    def remove_team_key(self, team_id: str, key_id: str) -> TeamRecord | None:
        return self.teams.remove_key(team_id, key_id)

    # ------------------------------------------------------------------ rate limits

    def lease(self, key_id: str, limits: Limits, min_requests: int, min_tokens: int, want_requests: int, want_tokens: int) -> Grant:
        return self.limiter.lease(key_id, limits, min_requests, min_tokens, want_requests, want_tokens)

    def _budget_spent(self, key_id: str, period_start: float) -> int:
        return self.store.budget_spent(key_id, period_start)

    def _save_budget_spent(self, key_id: str, period_start: float, spent: int) -> None:
        try:
            self.store.set_budget_spent(key_id, period_start, spent)
        except KeyStoreWriteError as exc:  # kept in memory: a full disk must not stop serving
            logger.error("budget spending of %s not saved: %s", key_id, exc.message)

    def usage_add(self, rows: list[DailyUsage]) -> None:
        self.usage.add(rows)

    def usage_report(self, group_by: GroupBy, key_id: str | None, model: str | None, start: str | None,
                     end: str | None, team_id: str | None = None) -> list[dict]:
        return self.usage.report(group_by, key_id=key_id, model=model, start=start, end=end, team_id=team_id)

    def give_back(self, returns: list[tuple[str, int, int, int]]) -> None:
        for key_id, lease_id, requests, tokens in returns:
            self.limiter.give_back(key_id, lease_id, requests, tokens)

    # ------------------------------------------------------------------ cache

    def cache_get(self, keys: list[str]) -> list[tuple[bytes, float] | None]:
        return self.cache.get_many(keys)

    def cache_put(self, items: list[tuple[str, bytes, str]]) -> None:
        for key, value, model in items:
            self.cache.put(key, value, model)

    def cache_invalidate(self, model: str) -> int:
        return self.cache.invalidate_model(model)

    # ------------------------------------------------------------------ what replicas poll

    def sync(self, cache_version: int, local_hits: int = 0, local_misses: int = 0, models_version: int = 0,
             models_used: dict[str, float] | None = None) -> dict[str, Any]:
        """One call every 250 ms (1 s when idle) per ingress replica: breaker states, cache key
        changes and (when they changed) the run-time model records out; the hits and misses the
        replica answered by itself, and when it last sent each model a request, in."""
        self.cache.count_local(local_hits, local_misses)
        if models_used:
            self.models.touch(models_used)
        if self._clock() - self._gauges_at >= GAUGE_PERIOD_S:
            self.record_gauges()
        result = {"breakers": self.breaker_snapshots(), "cache": self.cache.changes_since(cache_version), "started": self.started}
        if models_version != self.models.version:
            result["models"] = {"version": self.models.version, "records": [r.model_dump(mode="json") for r in self.models.all()],
                                "aliases": self.models.aliases()}
        return result

    # ------------------------------------------------------------------ run-time models

    def models_list(self) -> list[dict[str, Any]]:
        return [record.model_dump(mode="json") for record in self.models.all()]

    def models_load(self, record: RuntimeModel, busy: list[str], max_models: int | None,
                    budget_bytes: int | None) -> dict[str, Any]:
        """Record a load (the reconciler deploys it), unloading the least recently used idle
        run-time models it needs room from. An error comes back as {"error": {...}}, for the
        ingress to raise (its fields survive the trip unchanged)."""
        existing = self.models.get(record.model)
        aliases = self.models.aliases()
        try:
            if record.model in aliases:
                raise ConflictError(f"'{record.model}' is an alias of '{aliases[record.model]}'; remove the alias "
                                    "or load the model under another id.", code="alias_exists")
            if existing is not None and existing.state != "failed":  # a failed load is retried
                if existing.state == "unloading":
                    raise ConflictError(f"Model '{record.model}' is being unloaded; load it again once it is gone.",
                                        code="model_unloading")
                if existing.same_spec(record):
                    return {"record": existing.model_dump(mode="json"), "evicted": []}
                if existing.state in ("loading", "pending"):
                    raise ConflictError(f"Model '{record.model}' is still loading with other arguments; wait for it "
                                        "to be ready, then unload it first.", code="model_loading")
                raise ConflictError(f"Model '{record.model}' is loaded with other arguments; unload it first.",
                                    code="model_exists")
            evicted = plan_evictions(record, self.models.all(), {*busy, *aliases.values()}, max_models=max_models,
                                     budget_bytes=budget_bytes, now=time.time())
        except ConflictError as error:  # NoRoomError among them
            return {"error": {"message": error.message, "code": error.code}}
        for name in evicted:
            self._unload(name, reason=f"least recently used, making room for {record.model}")
        self.models.put(record)
        self._nudge()
        logger.info("run-time model %s: load requested from %s", record.model, record.args.get("source"))
        return {"record": record.model_dump(mode="json"), "evicted": evicted}

    def models_unload(self, model: str) -> dict[str, Any] | None:
        """Stop routing to `model`, drain it, delete it; None when no such run-time model."""
        record = self.models.get(model)
        if record is None:
            return None
        pointing = sorted(alias for alias, target in self.models.aliases().items() if target == model)
        if pointing:
            # "refused", not "error": a record's own fields include one.
            return {"refused": {"message": f"Alias '{pointing[0]}' points at model '{model}'; point it elsewhere "
                                "(PUT /models/aliases/{alias}) or remove it first.", "code": "model_has_alias"}}
        return self._unload(model, reason="requested").model_dump(mode="json")

    def alias_set(self, alias: str, target: str) -> dict[str, Any]:
        """Point `alias` at the model `target` (the ingress checked that it exists and that
        neither is a config alias); {"error": ...} when either is already the other kind."""
        if alias in {record.model for record in self.models.all()}:
            return {"error": {"message": f"'{alias}' is a model's id, so it cannot be an alias.", "param": "alias",
                              "code": "model_exists"}}
        if target in self.models.aliases():
            return {"error": {"message": f"'{target}' is an alias itself; point '{alias}' at a model.", "param": "model",
                              "code": "alias_of_alias"}}
        record = self.models.get(target)
        if record is not None and record.state == "unloading":
            return {"error": {"message": f"Model '{target}' is being unloaded.", "param": "model", "code": "model_unloading"}}
        self.models.set_alias(alias, target)
        logger.info("alias %s -> %s", alias, target)
        return {"alias": alias, "model": target}

    def alias_delete(self, alias: str) -> bool:
        return self.models.delete_alias(alias)

    def _unload(self, model: str, reason: str) -> RuntimeModel:
        record = self.models.get(model)
        assert record is not None
        if record.state != "unloading":
            record = record.model_copy(update={"state": "unloading", "unloading_since": time.time()})
            self.models.put(record)
            logger.info("run-time model %s: unloading (%s)", model, reason)
            self._nudge()
        return record

    def _nudge(self) -> None:
        """Wake the reconciler (StateActor); plain StateCore (unit tests) has none."""


    # ------------------------------------------------------------------ breakers

    def _breaker(self, model: str) -> CircuitBreaker:
        breaker = self.breakers.get(model)
        if breaker is None:
            breaker = self.breakers[model] = CircuitBreaker(
                self.settings.breaker_threshold, self.settings.breaker_timeout_s, self._clock
            )
        return breaker

    def breaker_snapshots(self) -> dict[str, Snapshot]:
        return {model: breaker.snapshot() for model, breaker in self.breakers.items()}

    def breaker_report(self, model: str, ok: bool, caller: str | None = None) -> Snapshot:
        """A call's outcome; a failure names its caller (None: no request caused it)."""
        breaker = self._breaker(model)
        breaker.record_success() if ok else breaker.record_failure(caller)
        return breaker.snapshot()

    def breaker_probe(self, model: str) -> tuple[bool, Snapshot]:
        """Claim the one probe of a model whose breaker wants one, across every ingress: whether
        this caller got it, and the breaker now (closed already, say, by another's probe)."""
        breaker = self._breaker(model)
        return breaker.claim_probe(), breaker.snapshot()

    def breaker_probed(self, model: str, ok: bool | None) -> Snapshot:
        breaker = self._breaker(model)
        breaker.record_probe(ok)
        return breaker.snapshot()

    def breaker_replaced(self, model: str) -> None:
        """An ingress saw a new healthy replica of `model` (see ModelDirectory)."""
        breaker = self.breakers.get(model)
        if breaker is not None:
            breaker.replaced()

    # ------------------------------------------------------------------ metrics

    def record_gauges(self) -> None:
        """Breaker states, the cache's size and this actor's start time (its changes are
        restarts: an alert in deploy/prometheus/alerts.yml)."""
        self._gauges_at = self._clock()
        for model, snapshot in self.breaker_snapshots().items():
            self.metrics.set(catalogue.BREAKER_STATE, catalogue.BREAKER_VALUES[snapshot.state.value], model=model)
        stats = self.cache.stats()
        self.metrics.set(catalogue.CACHE_ENTRIES, stats.entries)
        self.metrics.set(catalogue.CACHE_BYTES, stats.bytes)
        self.metrics.set(catalogue.STATE_STARTED, self.started)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "settings": self.settings.model_dump(mode="json"),
            "cache": self.cache.stats().as_dict(),
            "breakers": {m: {"state": s.state.value, "consecutive_failures": s.consecutive_failures,
                             "retry_after_s": round(s.retry_after_s, 1)} for m, s in self.breaker_snapshots().items()},
        }
