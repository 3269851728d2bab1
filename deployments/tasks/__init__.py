"""The task registry: every module in this package that defines TASK and load() is a task.

A task turns OpenAI requests into engine calls for one kind of model (text-generation,
embedding, ...). Adding a task is adding a module; nothing else needs to change.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType


@cache
def registry() -> dict[str, ModuleType]:
    tasks: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(module, "TASK", None)
        if name and callable(getattr(module, "load", None)):
            tasks[name] = module
    return tasks


def get(task: str) -> ModuleType:
    tasks = registry()
    if task not in tasks:
        raise KeyError(f"unknown task {task!r}; known tasks: {sorted(tasks)}")
    return tasks[task]
