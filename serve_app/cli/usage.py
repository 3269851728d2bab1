"""`hfserve usage`: GET /admin/usage of a running server (admin key), as a table or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import urllib.parse

COUNTS = ("requests", "prompt_tokens", "completion_tokens", "errors", "cache_hits")


def add_parser(commands) -> None:
    usage = commands.add_parser("usage", help="requests, tokens, errors and cache hits per key, model or day (admin key)")
    usage.add_argument("--key", help="one key's id")
    usage.add_argument("--team", help="one team's id")
    usage.add_argument("--model")
    usage.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="the first UTC day")
    usage.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="the last UTC day")
    usage.add_argument("--group-by", default="day", choices=("key", "team", "model", "day"))
    usage.add_argument("--csv", action="store_true", help="CSV, for a spreadsheet")
    usage.add_argument("--json", action="store_true", help="the JSON answer")
    usage.add_argument("--url", default="http://127.0.0.1:8000", help="the server (or its gateway prefix)")


def run(args: argparse.Namespace) -> int:
    from serve_app.cli.keys import AdminApi

    query = {name: value for name, value in (("key", args.key), ("team", args.team), ("model", args.model), ("from", args.start),
                                              ("to", args.end), ("group_by", args.group_by)) if value}
    report = AdminApi(args.url)("GET", "/admin/usage?" + urllib.parse.urlencode(query))
    rows = report["data"]
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=[args.group_by, *COUNTS])
        writer.writeheader()
        writer.writerows(rows)
    else:
        print(render(rows, args.group_by))
    return 0


def render(rows: list[dict], group_by: str) -> str:
    names = ["-" if row[group_by] is None else str(row[group_by]) for row in rows]  # None: a key in no team
    width = max([len(group_by), *(len(name) for name in names)])
    lines = [f"{group_by:<{width}}  " + "  ".join(f"{name:>17}" for name in COUNTS)]
    lines += [f"{name:<{width}}  " + "  ".join(f"{row[count]:>17}" for count in COUNTS) for name, row in zip(names, rows, strict=True)]
    return "\n".join(lines)
