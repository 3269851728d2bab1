"""Whether a run-time load fits, and which models make room for it: the least recently used
idle run-time models go first, up to max_loaded_models and model_memory_budget_gb.
Config-file models are never evicted (they are not run-time records)."""

from __future__ import annotations

from contract.errors import ConflictError
from contract.lifecycle import RuntimeModel

GB = 1024**3
# A model that served a request this recently is busy (not evicted), even if no replica has
# reported a request in flight yet (replicas report with their health checks).
RECENTLY_USED_S = 5.0


class NoRoomError(ConflictError):
    """The load does not fit, and not enough idle models can make room."""


def gb(value: int | float) -> str:
    """A memory size for a message: GB, or MB below a tenth of one (a tiny model is not "0.00 GB")."""
    if value >= GB / 10:
        return f"{value / GB:.2f} GB"
    return f"{value / 2**20:.1f} MB" if value >= 2**20 else f"{value / 1024:.0f} KB"


def plan_evictions(new: RuntimeModel, records: list[RuntimeModel], busy: set[str], *,
                   max_models: int | None, budget_bytes: int | None, now: float) -> list[str]:
    """The models to unload, least recently used first, so that `new` fits; NoRoomError if it
    cannot. A model is busy while it serves requests (`busy`, or used within RECENTLY_USED_S
    of `now`) or is still loading."""
    busy = busy | {r.model for r in records if now - r.last_used < RECENTLY_USED_S}
    resident = [r for r in records if r.model != new.model and r.state in ("loading", "pending", "ready")]
    evictable = sorted((r for r in resident if r.state == "ready" and r.model not in busy), key=lambda r: r.last_used)
    need = new.estimated_bytes or 0
    if budget_bytes is not None and need > budget_bytes:
        raise NoRoomError(f"Model '{new.model}' needs about {gb(need)} (its weights), more than the whole "
                          f"model_memory_budget_gb of {gb(budget_bytes)}.", code="memory_budget_exceeded")
    evicted: list[str] = []

    def over() -> tuple[bool, bool]:
        kept = [r for r in resident if r.model not in evicted]
        too_many = max_models is not None and len(kept) + 1 > max_models
        used = sum(r.estimated_bytes or 0 for r in kept)
        too_big = budget_bytes is not None and used + need > budget_bytes
        return too_many, too_big

    while any(over()):
        if not evictable:
            too_many, _ = over()
            kept = [r for r in resident if r.model not in evicted]
            if too_many:
                raise NoRoomError(
                    f"max_loaded_models ({max_models}) run-time models are loaded and none of "
                    f"{', '.join(sorted(r.model for r in kept))} is idle; unload one or retry when one is.",
                    code="models_busy")
            used = sum(r.estimated_bytes or 0 for r in kept)
            raise NoRoomError(
                f"Model '{new.model}' needs about {gb(need)}, but only {gb(max(budget_bytes - used, 0))} of the "
                f"model_memory_budget_gb of {gb(budget_bytes)} is free and no idle model can be unloaded.",  # type: ignore[operator]
                code="memory_budget_exceeded")
        evicted.append(evictable.pop(0).model)
    return evicted
