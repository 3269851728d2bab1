"""How an ingress replica talks to the state actor: one typed, awaitable method per StateCore
operation, each with a deadline, and StateUnavailable when the actor does not answer (the
ingress then degrades to its copies)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from contract.lifecycle import RuntimeModel
from serve_app.state.circuit_breaker import Snapshot
from serve_app.state.core import StateCore, StateSettings
from serve_app.state.keys import KeyRecord, KeyUpdate, KeyUsage, NewKey
from serve_app.state.rate_limiter import Grant, Limits
from serve_app.state.teams import KeyWithTeam, NewTeam, TeamMembers, TeamRecord, TeamUpdate
from serve_app.state.usage_book import DailyUsage, GroupBy

R = TypeVar("R")

# What carries one call to the state: the StateCore method's name and its positional arguments.
Transport = Callable[[str, tuple], Awaitable[Any]]


class StateUnavailable(Exception):
    """The state actor did not answer in time (restarting, overloaded)."""


class StateClient:
    """How an ingress replica talks to the state. Each method has the name and positional
    parameters of the StateCore method it calls, plus `timeout_s` (None: the client's)."""

    def __init__(self, transport: Transport, timeout_s: float = 1.0):
        self._transport = transport
        self.timeout_s = timeout_s

    async def _call(self, fn: Callable[..., R], *args: Any, timeout_s: float | None = None) -> R:
        # Named by the function, not a string: references stay visible to tools and readers.
        method = fn.__name__
        try:
            return await asyncio.wait_for(self._transport(method, args), timeout_s or self.timeout_s)
        except TimeoutError as exc:
            raise StateUnavailable(f"state.{method} timed out") from exc
        except StateUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - actor died / restarting: the caller degrades
            if _is_ray_actor_error(exc):
                raise StateUnavailable(f"state.{method}: {type(exc).__name__}") from exc
            raise

    # ------------------------------------------------------------------ settings

    async def configure(self, settings: StateSettings, *, timeout_s: float | None = None) -> list[str]:
        return await self._call(StateCore.configure, settings, timeout_s=timeout_s)

    # ------------------------------------------------------------------ keys

    async def find_key(self, digest: str, *, timeout_s: float | None = None) -> KeyWithTeam | None:
        return await self._call(StateCore.find_key, digest, timeout_s=timeout_s)

    async def create_key(self, new: NewKey, *, timeout_s: float | None = None) -> tuple[str, KeyRecord]:
        return await self._call(StateCore.create_key, new, timeout_s=timeout_s)

    async def list_keys(self, include_revoked: bool = False, *, timeout_s: float | None = None) -> list[KeyRecord]:
        return await self._call(StateCore.list_keys, include_revoked, timeout_s=timeout_s)

    async def get_key(self, key_id: str, *, timeout_s: float | None = None) -> KeyRecord | None:
        return await self._call(StateCore.get_key, key_id, timeout_s=timeout_s)

    async def update_key(self, key_id: str, update: KeyUpdate, *, timeout_s: float | None = None) -> KeyRecord | None:
        return await self._call(StateCore.update_key, key_id, update, timeout_s=timeout_s)

    async def revoke_key(self, key_id: str, *, timeout_s: float | None = None) -> KeyRecord | None:
        return await self._call(StateCore.revoke_key, key_id, timeout_s=timeout_s)

    # ------------------------------------------------------------------ teams

    async def create_team(self, new: NewTeam, *, timeout_s: float | None = None) -> TeamRecord:
        return await self._call(StateCore.create_team, new, timeout_s=timeout_s)

    async def list_teams(self, *, timeout_s: float | None = None) -> list[TeamRecord]:
        return await self._call(StateCore.list_teams, timeout_s=timeout_s)

    async def get_team(self, team_id: str, *, timeout_s: float | None = None) -> TeamRecord | None:
        return await self._call(StateCore.get_team, team_id, timeout_s=timeout_s)

    async def update_team(self, team_id: str, update: TeamUpdate, *, timeout_s: float | None = None) -> TeamRecord | None:
        return await self._call(StateCore.update_team, team_id, update, timeout_s=timeout_s)

    async def delete_team(self, team_id: str, *, timeout_s: float | None = None) -> TeamRecord | None:
        return await self._call(StateCore.delete_team, team_id, timeout_s=timeout_s)

    async def add_team_keys(self, team_id: str, members: TeamMembers, *,
                            timeout_s: float | None = None) -> TeamRecord | None:
        return await self._call(StateCore.add_team_keys, team_id, members, timeout_s=timeout_s)

    async def remove_team_key(self, team_id: str, key_id: str, *, timeout_s: float | None = None) -> TeamRecord | None:
        return await self._call(StateCore.remove_team_key, team_id, key_id, timeout_s=timeout_s)

    async def usage_add(self, rows: list[DailyUsage], *, timeout_s: float | None = None) -> None:
        return await self._call(StateCore.usage_add, rows, timeout_s=timeout_s)

    async def usage_report(self, group_by: GroupBy, key_id: str | None, model: str | None, start: str | None,
                           end: str | None, team_id: str | None = None, *, timeout_s: float | None = None) -> list[dict]:
        return await self._call(StateCore.usage_report, group_by, key_id, model, start, end, team_id,
                                timeout_s=timeout_s)

    async def add_usage(self, usage: dict[str, KeyUsage], *, timeout_s: float | None = None) -> None:
        return await self._call(StateCore.add_usage, usage, timeout_s=timeout_s)

    # ------------------------------------------------------------------ rate limits

    async def lease(self, key_id: str, limits: Limits, min_requests: int, min_tokens: int, want_requests: int,
                    want_tokens: int, *, timeout_s: float | None = None) -> Grant:
        return await self._call(StateCore.lease, key_id, limits, min_requests, min_tokens, want_requests, want_tokens,
                                timeout_s=timeout_s)

    async def give_back(self, returns: list[tuple[str, int, int, int]], *, timeout_s: float | None = None) -> None:
        return await self._call(StateCore.give_back, returns, timeout_s=timeout_s)

    # ------------------------------------------------------------------ cache

    async def cache_get(self, keys: list[str], *, timeout_s: float | None = None) -> list[tuple[bytes, float] | None]:
        return await self._call(StateCore.cache_get, keys, timeout_s=timeout_s)

    async def cache_put(self, items: list[tuple[str, bytes, str]], *, timeout_s: float | None = None) -> None:
        return await self._call(StateCore.cache_put, items, timeout_s=timeout_s)

    async def cache_invalidate(self, model: str, *, timeout_s: float | None = None) -> int:
        return await self._call(StateCore.cache_invalidate, model, timeout_s=timeout_s)

    # ------------------------------------------------------------------ what replicas poll

    async def sync(self, cache_version: int, local_hits: int = 0, local_misses: int = 0, models_version: int = 0,
                   models_used: dict[str, float] | None = None, *, timeout_s: float | None = None) -> dict[str, Any]:
        return await self._call(StateCore.sync, cache_version, local_hits, local_misses, models_version, models_used,
                                timeout_s=timeout_s)

    # ------------------------------------------------------------------ run-time models

    async def models_list(self, *, timeout_s: float | None = None) -> list[dict[str, Any]]:
        return await self._call(StateCore.models_list, timeout_s=timeout_s)

    async def models_load(self, record: RuntimeModel, busy: list[str], max_models: int | None, budget_bytes: int | None,
                          *, timeout_s: float | None = None) -> dict[str, Any]:
        return await self._call(StateCore.models_load, record, busy, max_models, budget_bytes, timeout_s=timeout_s)

    async def alias_set(self, alias: str, target: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        return await self._call(StateCore.alias_set, alias, target, timeout_s=timeout_s)

    async def alias_delete(self, alias: str, *, timeout_s: float | None = None) -> bool:
        return await self._call(StateCore.alias_delete, alias, timeout_s=timeout_s)

    async def models_unload(self, model: str, *, timeout_s: float | None = None) -> dict[str, Any] | None:
        return await self._call(StateCore.models_unload, model, timeout_s=timeout_s)

    # ------------------------------------------------------------------ breakers

    async def breaker_report(self, model: str, ok: bool, caller: str | None = None, *,
                             timeout_s: float | None = None) -> Snapshot:
        return await self._call(StateCore.breaker_report, model, ok, caller, timeout_s=timeout_s)

    async def breaker_probe(self, model: str, *, timeout_s: float | None = None) -> tuple[bool, Snapshot]:
        return await self._call(StateCore.breaker_probe, model, timeout_s=timeout_s)

    async def breaker_probed(self, model: str, ok: bool | None, *, timeout_s: float | None = None) -> Snapshot:
        return await self._call(StateCore.breaker_probed, model, ok, timeout_s=timeout_s)

    async def breaker_replaced(self, model: str, *, timeout_s: float | None = None) -> None:
        return await self._call(StateCore.breaker_replaced, model, timeout_s=timeout_s)

    # ------------------------------------------------------------------ status

    async def status(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        return await self._call(StateCore.status, timeout_s=timeout_s)

    # ------------------------------------------------------------------ transports

    @classmethod
    def local(cls, core: StateCore) -> StateClient:
        """In-process (unit tests)."""

        async def transport(method: str, args: tuple) -> Any:
            return getattr(core, method)(*args)

        return cls(transport)

    @classmethod
    def ray_actor(cls, handle: Any) -> StateClient:
        """Over the state actor's handle (actor.get_or_create_actor)."""

        async def transport(method: str, args: tuple) -> Any:
            return await getattr(handle, method).remote(*args)

        return cls(transport)


def _is_ray_actor_error(exc: BaseException) -> bool:
    from ray import exceptions

    return isinstance(exc, exceptions.RayActorError | exceptions.ActorUnavailableError | exceptions.ActorDiedError)
