"""A model's task when its args omit it: what its files say (contract/tasks.py infer_task).

claims() sees the files before any conversion: a local or `package:` directory's config.json
and top-level names, a GGUF file's name only (it has a config.json once converted, which needs
the task), or a hub model's config.json and file list. `with_task` runs where a model's files
are first needed (the deploy plan, the model builder, a run-time load), so the replica,
/v1/models and the task-specific field checks all see the inferred task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import tasks
from contract.config import ModelAppArgs

from .sources import ModelSource, SourceError, SourceNotFoundError, parse_source, shown


@dataclass(frozen=True)
class ModelFiles:
    """What claims() reads: config.json as a dict ({} without one) and the top-level file names."""

    config: dict[str, Any]
    files: frozenset[str]


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path.name} is not readable JSON ({type(exc).__name__})") from None
    return config if isinstance(config, dict) else {}


def _hub_files(source: ModelSource) -> ModelFiles:
    try:
        from huggingface_hub import HfApi, hf_hub_download

        names = HfApi().list_repo_files(source.location, revision=source.revision)
        config = hf_hub_download(source.location, "config.json", revision=source.revision) if "config.json" in names else None
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: all say "cannot look"
        try:  # offline: a snapshot already in the HF cache will do
            from huggingface_hub import snapshot_download

            return local_files(Path(snapshot_download(source.location, revision=source.revision, local_files_only=True)))
        except Exception:  # noqa: BLE001
            raise SourceNotFoundError(f"cannot read hub model {shown(source.location)} to infer its task "
                                f"({type(exc).__name__}: {exc})") from exc
    return ModelFiles(_read_config(Path(config)) if config else {}, frozenset(name.split("/")[0] for name in names))


def local_files(path: Path) -> ModelFiles:
    if path.is_file():
        return ModelFiles({}, frozenset({path.name}))
    try:
        names = frozenset(child.name for child in path.iterdir())
    except OSError as exc:
        raise SourceError(f"model directory {shown(str(path))} cannot be listed ({exc.strerror or type(exc).__name__})") from None
    return ModelFiles(_read_config(path / "config.json"), names)


def model_files(source_text: str, revision: str | None = None) -> ModelFiles:
    """What the source holds, without converting or downloading weights. SourceError if it cannot
    be resolved."""
    source = parse_source(source_text, revision)
    if source.kind == "hub":
        return _hub_files(source)
    return local_files(Path(source.location))


def infer_task(source_text: str, revision: str | None = None) -> str:
    """The task the source's files name; SourceError or tasks.TaskInferenceError (both
    ValueErrors) with a message for the user."""
    found = model_files(source_text, revision)
    try:
        return tasks.infer_task(found.config, found.files)
    except tasks.TaskInferenceError as exc:
        raise tasks.TaskInferenceError(f"model {source_text!r}: {exc}") from None


def with_task(args: ModelAppArgs) -> ModelAppArgs:
    """The args with their task: as given, or inferred from the model's files and then checked
    against that task's rules (a field of another task, the task's own checks), as a config
    with the task written out would have been."""
    if args.task is not None:
        return args
    try:
        task = infer_task(args.source, args.revision)
    except SourceError as exc:  # the same class: a source missing here is not a bad one
        raise type(exc)(f"task not set and cannot be inferred: {exc}; set `task`") from None
    resolved = args.model_copy(update={"task": task})
    try:
        tasks.check_args(resolved)
    except ValueError as exc:
        raise tasks.TaskInferenceError(f"model {args.source!r}, task inferred as {task}: {exc}") from None
    return resolved
