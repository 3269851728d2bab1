"""`hfserve teams create | list | info | update | delete | add | remove`: teams of API keys that
share model access, RPM, TPM and a token budget; on the SQLite store directly or, with --url,
through a running server's admin API, as `hfserve keys`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from serve_app.cli.keys import AdminApi, answer, state_dir
from serve_app.state.keys import KeyStore
from serve_app.state.teams import NewTeam, TeamMembers, TeamStore, TeamUpdate


def add_parser(commands) -> None:
    teams = commands.add_parser("teams", help="manage teams of API keys (on the store, or through --url)")
    verbs = teams.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create a team")
    create.add_argument("--name", required=True)
    create.add_argument("--keys", help="comma-separated key ids to make members")
    update = verbs.add_parser("update", help="change a team (takes effect within 2 s)")
    update.add_argument("id")
    update.add_argument("--name")
    for sub in (create, update):
        null = " (or 'none')" if sub is update else ""
        sub.add_argument("--models", help="comma-separated model ids its keys may use" + (", or '*'" if null else ""))
        sub.add_argument("--rpm", help="requests per minute of all its keys together" + null)
        sub.add_argument("--tpm", help="tokens per minute of all its keys together" + null)
        sub.add_argument("--budget-tokens", help="tokens all its keys may spend per --budget-period" + null)
        sub.add_argument("--budget-period", help="day, week, month (default) or a duration such as 12h")
        sub.add_argument("--metadata", help="a JSON object")
    verbs.add_parser("list", help="every team with its keys")
    for verb, text in (("info", "one team"), ("delete", "delete a team; its keys stay, in no team")):
        verbs.add_parser(verb, help=text).add_argument("id")
    for verb, text in (("add", "make keys members"), ("remove", "take a key out of the team")):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("id")
        sub.add_argument("keys", nargs="+", metavar="KEY_ID")
    for sub in verbs.choices.values():
        sub.add_argument("--url", help="a running server: go through its admin API with the admin key")
        sub.add_argument("--json", action="store_true", help="machine-readable output")


def _fields(args: argparse.Namespace, nulls: bool) -> dict[str, Any]:
    """The flags given; with `nulls` (an update), 'none' and '*' are the nulls that remove a limit."""
    fields: dict[str, Any] = {}
    if args.name is not None:
        fields["name"] = args.name
    if args.models is not None:
        fields["models"] = None if nulls and args.models.strip() == "*" else [
            m.strip() for m in args.models.split(",") if m.strip()]
    for name in ("rpm", "tpm", "budget_tokens"):
        if (value := getattr(args, name)) is not None:
            fields[name] = None if nulls and value == "none" else int(value)
    if args.budget_period is not None:
        fields["budget_period"] = args.budget_period
    if args.metadata is not None:
        fields["metadata"] = json.loads(args.metadata)
    return fields


def run(args: argparse.Namespace) -> int:
    return answer(args, _run, lambda result: print("\n".join(render(team) for team in
                                                               (result if isinstance(result, list) else [result]))),
                  "team")


def _run(args: argparse.Namespace) -> Any:
    if args.verb == "create":
        new = NewTeam(**_fields(args, nulls=False), **({"keys": args.keys.split(",")} if args.keys else {}))
    elif args.verb == "update":
        update = TeamUpdate(**_fields(args, nulls=True))
    if args.url:
        api = AdminApi(args.url)
        path = f"/admin/teams/{args.id}" if args.verb not in ("create", "list") else "/admin/teams"
        if args.verb == "create":
            return api("POST", path, new.model_dump(exclude_none=True))
        if args.verb == "update":
            return api("PATCH", path, update.model_dump(exclude_unset=True))
        if args.verb == "add":
            return api("POST", path + "/keys", TeamMembers(keys=args.keys).model_dump())
        if args.verb == "remove":
            result = None
            for key_id in args.keys:
                result = api("DELETE", f"{path}/keys/{key_id}")
            return result
        listed = api("DELETE" if args.verb == "delete" else "GET", path)
        return listed["data"] if args.verb == "list" else listed
    keys = KeyStore(state_dir() / "keys.db")
    teams = TeamStore(keys)
    try:
        record: Any
        if args.verb == "create":
            record = teams.create(new)
        elif args.verb == "list":
            return [team.model_dump() for team in teams.list()]
        elif args.verb == "update":
            record = teams.update(args.id, update)
        elif args.verb == "add":
            record = teams.add_keys(args.id, TeamMembers(keys=args.keys).keys)
        elif args.verb == "remove":
            record = teams.get(args.id)
            for key_id in args.keys if record is not None else []:
                record = teams.remove_key(args.id, key_id)
        else:
            record = teams.get(args.id) if args.verb == "info" else teams.delete(args.id)
        return record.model_dump() if record is not None else None
    finally:
        keys.close()


def render(team: dict[str, Any]) -> str:
    models = ",".join(team["allowed_models"]) if team["allowed_models"] is not None else "*"
    budget = f"budget={team['budget_tokens']}/{team['budget_period']} " if team.get("budget_tokens") else ""
    return (f"{team['id']}  {team['name']:<20} models={models} rpm={team['rpm'] or '-'} tpm={team['tpm'] or '-'} "
            f"{budget}keys={','.join(team['keys']) or '-'}")
