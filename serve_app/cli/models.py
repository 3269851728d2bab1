"""`hfserve models load|unload|list [--url URL] [--json]`: the run-time model lifecycle of a
running server (POST /models/load, POST /models/unload, GET /v1/models and GET /models),
through its admin API with the admin key (HF_SERVER_API_KEY or <state_dir>/admin.key)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import yaml

from serve_app.cli.status import DASH, _columns

LIST_HEADER = ("MODEL", "STATUS", "TASK", "ORIGIN", "LOAD S", "EST. MEMORY", "ERROR")


def add_parser(commands) -> None:
    models = commands.add_parser("models", help="load and unload models at run time; list every model (admin key)")
    verbs = models.add_subparsers(dest="verb", required=True)
    load = verbs.add_parser("load", help="load a model without a restart (answers once it is loading; --wait for ready)")
    load.add_argument("model", help="the id clients will send")
    load.add_argument("source", help="a model directory, a hub id, or package:<package>/<file>")
    load.add_argument("--task", help="default: inferred from the model's config.json")
    load.add_argument("--hardware", help="auto, or one of cuda, rocm, mps, openvino, qnn, cpu")
    load.add_argument("--backend", choices=("auto", "openvino", "transformers", "vllm"))
    load.add_argument("--min-replicas", type=int, help="autoscaling: 0 scales to zero when idle")
    load.add_argument("--max-replicas", type=int, help="autoscaling: the most replicas")
    load.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="any other model arg, e.g. --option num_cpus=1 (values are YAML)")
    load.add_argument("--wait", type=float, metavar="SECONDS", help="wait until it is ready (or failed)")
    unload = verbs.add_parser("unload", help="drain a run-time model and remove it")
    unload.add_argument("model")
    verbs.add_parser("list", help="every model with its status; run-time ones with their load time")
    alias = verbs.add_parser("alias", help="point an alias at a model (or --remove it); no ALIAS lists them")
    alias.add_argument("alias", nargs="?")
    alias.add_argument("model", nargs="?", help="the model it names")
    alias.add_argument("--remove", action="store_true", help="remove the run-time alias")
    for sub in (load, unload, verbs.choices["list"], alias):
        sub.add_argument("--url", default="http://127.0.0.1:8000", help="the server (or its gateway prefix)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")


def load_body(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option takes KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    body: dict[str, Any] = {"model": args.model, "source": args.source, "options": options}
    for name in ("task", "hardware", "backend"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    if args.min_replicas is not None or args.max_replicas is not None:
        scaling = {"min_replicas": args.min_replicas if args.min_replicas is not None else 1}
        scaling["max_replicas"] = args.max_replicas if args.max_replicas is not None else max(1, scaling["min_replicas"])
        body["autoscaling"] = scaling
    return body


def run(args: argparse.Namespace) -> int:
    from serve_app.cli.keys import AdminApi

    api = AdminApi(args.url)
    if args.verb == "load":
        result = api("POST", "/models/load", load_body(args))
        if args.wait:
            result = _wait(api, args.model, args.wait) or result
    elif args.verb == "unload":
        result = api("POST", "/models/unload", {"model": args.model})
    elif args.verb == "alias":
        return _alias(api, args)
    else:
        result = merged_list(api("GET", "/v1/models")["data"], api("GET", "/models")["data"])
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.verb == "list":
        print(render(result))
    else:
        evicted = f" (unloaded to make room: {', '.join(result['evicted'])})" if result.get("evicted") else ""
        print(f"{result.get('model', result.get('id'))}: {result['status']}{evicted}"
              + (f": {result['error'] or result.get('message')}" if result.get("error") or result.get("message") else ""))
    return 1 if isinstance(result, dict) and result.get("status") == "failed" else 0


def _alias(api, args: argparse.Namespace) -> int:
    if args.alias is None:
        result: Any = api("GET", "/models/aliases")["data"]
        lines = [f"{row['alias']} -> {row['model']} ({row['source']})" for row in result]
    elif args.remove:
        result = api("DELETE", f"/models/aliases/{args.alias}")
        lines = [f"{args.alias}: removed"]
    elif args.model is None:
        raise SystemExit("give the model the alias names, or --remove")
    else:
        result = api("PUT", f"/models/aliases/{args.alias}", {"model": args.model})
        lines = [f"{result['alias']} -> {result['model']}"]
    print(json.dumps(result, indent=2) if args.json else "\n".join(lines))
    return 0


def _wait(api, model: str, timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        card = next((c for c in api("GET", "/v1/models")["data"] if c["id"] == model), None)
        if card is not None and card["status"] in ("ready", "idle", "failed"):
            return card
        time.sleep(0.5)
    raise SystemExit(f"{model}: not ready within {timeout_s:g}s")


def merged_list(cards: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """/v1/models' cards, each with its run-time record's estimate when it has one."""
    by_model = {record["model"]: record for record in records}
    return [{**card, "estimated_bytes": by_model.get(card["id"], {}).get("estimated_bytes")} for card in cards]


def render(models: list[dict[str, Any]]) -> str:
    if not models:
        return "no models"
    rows = [LIST_HEADER]
    for card in models:
        estimate = card.get("estimated_bytes")
        rows.append((
            card["id"], card.get("status") or DASH, card.get("task") or DASH,
            "run-time" if card.get("loaded_at_runtime") else "config",
            DASH if card.get("load_seconds") is None else f"{card['load_seconds']:.1f}",
            DASH if estimate is None else f"{estimate / 2**20:.0f} MiB",
            card.get("error") or "",
        ))
    return "\n".join(_columns(rows))
