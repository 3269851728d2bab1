"""How an ingress replica talks to the state actor: awaitable calls with a deadline, and
StateUnavailable when the actor does not answer (the ingress then degrades to its copies)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serve_app.state.core import StateCore


class StateUnavailable(Exception):
    """The state actor did not answer in time (restarting, overloaded)."""


class StateClient:
    """How an ingress replica talks to the state: one awaitable call with a deadline."""

    def __init__(self, call: Callable[[str, tuple], Any], timeout_s: float = 1.0):
        self._call = call
        self.timeout_s = timeout_s

    async def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self._call(method, args), timeout_s or self.timeout_s)
        except TimeoutError as exc:
            raise StateUnavailable(f"state.{method} timed out") from exc
        except StateUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - actor died / restarting: the caller degrades
            if _is_ray_actor_error(exc):
                raise StateUnavailable(f"state.{method}: {type(exc).__name__}") from exc
            raise

    @classmethod
    def local(cls, core: StateCore) -> StateClient:
        """In-process (unit tests)."""

        async def call(method: str, args: tuple) -> Any:
            return getattr(core, method)(*args)

        return cls(call)

    @classmethod
    def ray_actor(cls, handle: Any) -> StateClient:
        """Over the state actor's handle (actor.get_or_create_actor)."""

        async def call(method: str, args: tuple) -> Any:
            return await getattr(handle, method).remote(*args)

        return cls(call)


def _is_ray_actor_error(exc: BaseException) -> bool:
    from ray import exceptions

    return isinstance(exc, exceptions.RayActorError | exceptions.ActorUnavailableError | exceptions.ActorDiedError)
