"""The task table: one TaskSpec per task, found through the `hfserve.tasks` entry points.

A task's module defines ``TASK = TaskSpec(...)``: its name, its endpoints (and through the endpoint
table their handle methods), the ModelAppArgs fields it reads with its checks of them, and load().
Adding a task is a module and one entry-point line (pyproject.toml, or a plug-in's metadata).
Config validation, ModelServer, the model directory and `hfserve discover` all read this table;
a model that omits its task gets the one whose claims() recognise its files (infer_task).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .endpoints import ENDPOINTS
from .model_api import ServingTask

logger = logging.getLogger("ray.serve")

ENTRY_POINT_GROUP = "hfserve.tasks"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    summary: str  # one line, for `hfserve discover`
    endpoints: tuple[str, ...]  # names in contract.endpoints.ENDPOINTS
    # load(model_id, args: ModelAppArgs, prepared: deployments.sources.PreparedModel,
    #      backend: hardware.select.BackendChoice) -> ServingTask. Runs in the model replica.
    load: Callable[[str, Any, Any, Any], ServingTask]
    # What its weights load as, in transformers' pipeline names: text-generation,
    # feature-extraction or text-classification (deployments/sources.py picks the classes).
    hf_task: str = "feature-extraction"
    # ModelAppArgs fields only this task (among others) reads; setting one on a model of a
    # task that does not read it is a config error rather than a silent no-op.
    fields: frozenset[str] = frozenset()
    # Extra rules over the args (e.g. default_max_tokens < max_model_len); raises ValueError.
    check: Callable[[Any], None] | None = None
    # Whether a model's own files say it is for this task: claims(config, files) with config
    # the model's config.json as a dict ({} when it has none) and files the names at the top of
    # its directory (a GGUF source: just the .gguf file's name; it has no config.json until it
    # is converted, which needs the task). Used when a model omits `task` (infer_task below);
    # a task without it is never inferred. Keep it cheap and pure: it runs at deploy time.
    claims: Callable[[dict[str, Any], frozenset[str]], bool] | None = None
    # The engines it runs on, as (backend, engine) pairs: backend as ModelAppArgs.backend names it,
    # engine a few words for `hfserve discover`. Declarative only: load() picks the engine.
    engines: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name in self.endpoints if name not in ENDPOINTS]
        if unknown or not self.endpoints:
            raise ValueError(f"task {self.name!r}: endpoints must be some of {sorted(ENDPOINTS)}, got {unknown or '()'}")

    @property
    def handle_methods(self) -> tuple[str, ...]:
        return tuple(method for endpoint in self.endpoints for method in ENDPOINTS[endpoint].methods)


class UnknownTaskError(ValueError):
    pass


class TaskInferenceError(ValueError):
    """A model without `task` whose files do not name exactly one task."""


def task_names() -> list[str]:
    """The registered names, without importing any task module."""
    return sorted(entry_points(group=ENTRY_POINT_GROUP).names)


@functools.cache
def _load() -> tuple[dict[str, TaskSpec], dict[str, str]]:
    specs: dict[str, TaskSpec] = {}
    broken: dict[str, str] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = entry.load()
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not hide the others
            broken[entry.name] = f"{entry.value} failed to import: {type(exc).__name__}: {exc}"
            logger.warning("task %s: %s", entry.name, broken[entry.name])
            continue
        if not isinstance(spec, TaskSpec) or spec.name != entry.name:
            broken[entry.name] = f"{entry.value} is not a TaskSpec named {entry.name!r}"
        elif entry.name in specs and specs[entry.name] is not spec:
            broken[entry.name] = f"two packages register task {entry.name!r}"
        else:
            specs[entry.name] = spec
    for name in broken:
        specs.pop(name, None)
    return dict(sorted(specs.items())), broken


def registry() -> dict[str, TaskSpec]:
    """Every task that loaded, by name."""
    return _load()[0]


def broken() -> dict[str, str]:
    """Registered tasks that could not be used, with why."""
    return dict(_load()[1])


def get(name: str) -> TaskSpec:
    specs, broken = _load()
    if name in broken:
        raise UnknownTaskError(f"task {name!r} is registered but unusable: {broken[name]}")
    if name not in specs:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(specs)}")
    return specs[name]


def refresh() -> None:
    """Forget what was found (after installing a plug-in into a running interpreter)."""
    _load.cache_clear()


def claimants(config: dict[str, Any], files: frozenset[str]) -> list[str]:
    """The tasks whose claims() says the model (its config.json, its file names) is theirs."""
    found = []
    for name, spec in registry().items():
        if spec.claims is None:
            continue
        try:
            claimed = bool(spec.claims(config, files))
        except Exception as exc:  # noqa: BLE001 - a faulty plug-in claims nothing
            logger.warning("task %s: claims() raised %s: %s; counted as not claiming", name, type(exc).__name__, exc)
            continue
        if claimed:
            found.append(name)
    return found


def infer_task(config: dict[str, Any], files: frozenset[str]) -> str:
    """The one task that claims the model; TaskInferenceError when none or several do."""
    found = claimants(config, files)
    if len(found) == 1:
        return found[0]
    architectures = ", ".join(map(str, config.get("architectures") or [])) or "none"
    if not found:
        model_type = config.get("model_type")
        seen = f"architectures: {architectures}" + (f", model_type: {model_type}" if model_type else "")
        raise TaskInferenceError(
            f"could not infer the model's task from its files ({seen}); no task claims it. Set `task` to one "
            f"of: {', '.join(registry())}"
        )
    raise TaskInferenceError(
        f"the model's task is ambiguous (architectures: {architectures}): it could be any of {', '.join(found)}. "
        "Set `task` to the one you mean"
    )


def check_args(args: Any) -> None:
    """A model's args against its task: no field of another task, then the task's own rules.
    A model without a task yet (inferred at deploy) is checked once it has one."""
    if args.task is None:
        return
    spec = get(args.task)
    others = set().union(*(other.fields for other in registry().values())) - spec.fields
    foreign = sorted(args.model_fields_set & others)
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: not used by {spec.name} models")
    backends = {backend for backend, _ in spec.engines}
    if backends and args.backend != "auto" and args.backend not in backends:
        raise ValueError(f"backend {args.backend!r}: {spec.name} models run on {', '.join(sorted(backends))}")
    if spec.check is not None:
        spec.check(args)
