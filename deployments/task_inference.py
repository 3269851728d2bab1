"""A model's task when its args omit it: what its files say (contract/tasks.py infer_task).

What a task's claims() sees is what the source resolution gives before any conversion:
- a local or `package:` directory: its config.json and the names at its top;
- a GGUF file: only its name (its config.json exists once it is converted, and the conversion
  needs the task);
- a hub id: its config.json and file list from the hub (network, or the local HF cache).

`with_task` runs where a model's files are first needed: the deploy plan of `hfserve serve`
(before anything starts) and the model application's builder (every deploy, `serve deploy`
included). The args it returns carry the task, so the replica, /v1/models and the check of
task-specific fields all see the inferred one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import tasks
from contract.config import ModelAppArgs

from .sources import ModelSource, SourceError, parse_source


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
        raise SourceError(f"{path} is not readable JSON: {exc}") from exc
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
            raise SourceError(f"cannot read hub model {source.location!r} to infer its task "
                              f"({type(exc).__name__}: {exc})") from exc
    return ModelFiles(_read_config(Path(config)) if config else {}, frozenset(name.split("/")[0] for name in names))


def local_files(path: Path) -> ModelFiles:
    if path.is_file():
        return ModelFiles({}, frozenset({path.name}))
    return ModelFiles(_read_config(path / "config.json"), frozenset(child.name for child in path.iterdir()))


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
    except SourceError as exc:
        raise SourceError(f"task not set and cannot be inferred: {exc}; set `task`") from None
    resolved = args.model_copy(update={"task": task})
    try:
        tasks.check_args(resolved)
    except ValueError as exc:
        raise tasks.TaskInferenceError(f"model {args.source!r}, task inferred as {task}: {exc}") from None
    return resolved
