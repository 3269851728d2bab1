"""`hfserve discover [--json] [--config PATH] [--url URL]`: the task table as a user sees it.

For each task: its summary, endpoints (routes), handle methods, the engines it runs on per
backend, whether a model's task can be inferred as it, and which model applications of a config
serve it (default HF_SERVER_CONFIG or ./serve_config.yaml). A model that omits its task is
placed by inference when its files are here (a local directory or a `package:` source); a hub
model's task is inferred at deploy. With --url, the models a running server reports are listed
too (with the admin key, as `hfserve status`). Broken plug-ins are listed with why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

INFERRED_AT_DEPLOY = "task not set: inferred at deploy"


def _config_models(path: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Each model application of the config: its task (given or inferred here) or why not."""
    from contract.config import ModelAppArgs
    from deployments.sources import parse_source
    from deployments.task_inference import with_task
    from serve_app.cli.deploy_plan import DeployConfigError, load_yaml, validate_app_args

    try:
        config = load_yaml(path)
    except DeployConfigError as exc:
        return {}, str(exc)
    models: dict[str, dict[str, Any]] = {}
    for app in config.get("applications") or []:
        name = str(app.get("name") or "?")
        if app.get("import_path") != "serve_app.app:build_model_app":
            continue
        entry: dict[str, Any] = {"model": name, "source": (app.get("args") or {}).get("source"), "task": None}
        models[name] = entry
        try:
            args = validate_app_args(app["import_path"], app.get("args"), name)
        except DeployConfigError as exc:
            entry["error"] = str(exc)
            continue
        assert isinstance(args, ModelAppArgs)
        if args.task is not None:
            entry.update(task=args.task, how="config")
            continue
        try:
            if parse_source(args.source, args.revision).kind == "hub":
                entry["note"] = f"{INFERRED_AT_DEPLOY} (a hub model: its files are read then)"
                continue
            entry.update(task=with_task(args).task, how="inferred")
        except ValueError as exc:
            entry["error"] = f"{INFERRED_AT_DEPLOY} fails: {exc}"
    return models, None


def _server_models(url: str) -> list[dict[str, Any]]:
    from serve_app.cli.keys import AdminApi

    listing = AdminApi(url)("GET", "/v1/models")
    return [{"model": card["id"], "task": card.get("task"), "status": card.get("status")}
            for card in listing.get("data") or []]


def report(config_path: Path | None, *, explicit: bool, url: str | None) -> dict[str, Any]:
    from contract import tasks
    from contract.endpoints import ENDPOINTS

    configured: dict[str, dict[str, Any]] = {}
    config_error = None
    if config_path is not None and (explicit or config_path.exists()):
        configured, config_error = _config_models(config_path)
    running = _server_models(url) if url else []
    table = tasks.registry()
    out_tasks = []
    for name, spec in table.items():
        out_tasks.append({
            "name": name,
            "summary": spec.summary,
            "endpoints": [{"name": e, "path": ENDPOINTS[e].path} for e in spec.endpoints],
            "handle_methods": list(spec.handle_methods),
            "hf_task": spec.hf_task,
            "fields": sorted(spec.fields),
            "engines": [{"backend": backend, "engine": engine} for backend, engine in spec.engines],
            "inferable": spec.claims is not None,
            "models": [{"model": m["model"], "how": m["how"]} for m in configured.values() if m["task"] == name],
            "running": [{"model": m["model"], "status": m["status"]} for m in running if m["task"] == name],
        })
    return {
        "tasks": out_tasks,
        "config": str(config_path) if configured or config_error else None,
        "config_error": config_error,
        "models_without_task": [m for m in configured.values() if m["task"] not in table],
        "server": url,
        "running_without_task": [m for m in running if m["task"] not in table],
        "broken": [{"name": name, "reason": reason} for name, reason in tasks.broken().items()],
    }


def render(data: dict[str, Any]) -> str:
    lines = []
    for task in data["tasks"]:
        paths = ", ".join(e["path"] for e in task["endpoints"])
        lines.append(f"{task['name']:<18} {paths:<40} {task['summary']}")
        engines = "; ".join(f"{e['backend']}: {e['engine']}" for e in task["engines"]) or "(chosen by the task's load())"
        detail = [
            ("endpoints", ", ".join(f"{e['name']} {e['path']}" for e in task["endpoints"])),
            ("handle methods", ", ".join(task["handle_methods"])),
            ("engines", engines),
            ("inferred", "from a model's config.json and files" if task["inferable"] else "never: set task"),
        ]
        if data["config"]:
            models = ", ".join(m["model"] + (" (inferred)" if m["how"] == "inferred" else "") for m in task["models"])
            detail.append(("models", models or "-"))
        if data["server"]:
            detail.append(("running", ", ".join(f"{m['model']} ({m['status']})" for m in task["running"]) or "-"))
        lines += [f"    {label:<15} {value}" for label, value in detail]
    if data["config"]:
        lines.append(f"(models: the model applications of {data['config']})")
    if data["config_error"]:
        lines.append(f"config: {data['config_error']}")
    if data["models_without_task"]:
        lines.append(f"models of {data['config']} without a task yet:")
        lines += [f"    {m['model']:<24} {m.get('error') or m.get('note')}" for m in data["models_without_task"]]
    if data["running_without_task"]:
        lines.append(f"models at {data['server']} of no known task:")
        lines += [f"    {m['model']:<24} task {m['task']}, {m['status']}" for m in data["running_without_task"]]
    if data["broken"]:
        lines.append("broken task plug-ins:")
        lines += [f"    {b['name']:<24} {b['reason']}" for b in data["broken"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from contract.config import read_env

    env_config = read_env().config
    explicit = args.config is not None or env_config is not None
    path = Path(args.config or env_config or "serve_config.yaml")
    data = report(path, explicit=explicit, url=args.url)
    print(json.dumps(data, indent=2) if args.json else render(data))
    return 2 if data["config_error"] else 0
