"""`hfserve keys create | list | info | update | revoke`, on the SQLite store directly or, with --url,
through a running server's admin API (authenticated with HF_SERVER_API_KEY or
<state_dir>/admin.key). Either way a new key works on the running server at once, and a
revocation reaches every ingress replica within 2 s."""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from contract.config import read_env
from contract.errors import APIError
from contract.ingress_args import IngressArgs
from serve_app.state.keys import KeyStore, KeyUpdate, NewKey, read_admin_key_file


def parse_duration(text: str) -> int:
    """'30d', '12h', '90m', '3600s' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m, 3600s)")
    number, unit = int(match.group(1)), match.group(2) or "s"
    return number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def _new_key(args: argparse.Namespace) -> NewKey:
    return NewKey(
        name=args.name,
        models=[m.strip() for m in args.models.split(",") if m.strip()] if args.models else None,
        rpm=args.rpm,
        tpm=args.tpm,
        admin=args.admin,
        expires_in_s=parse_duration(args.expires) if args.expires else None,
        budget_tokens=args.budget_tokens,
        budget_period=args.budget_period,
    )


def _key_update(args: argparse.Namespace) -> KeyUpdate:
    """The flags given, as a KeyUpdate: '*', 'default' and 'never' are the nulls that restore a default."""
    fields: dict[str, Any] = {}
    if args.name is not None:
        fields["name"] = args.name
    if args.models is not None:
        fields["models"] = None if args.models.strip() == "*" else [m.strip() for m in args.models.split(",") if m.strip()]
    for name in ("rpm", "tpm"):
        if (value := getattr(args, name)) is not None:
            fields[name] = None if value == "default" else int(value)
    if args.expires is not None:
        fields["expires_in_s"] = None if args.expires == "never" else parse_duration(args.expires)
    if args.metadata is not None:
        fields["metadata"] = json.loads(args.metadata)
    if args.budget_tokens is not None:
        fields["budget_tokens"] = None if args.budget_tokens == "none" else int(args.budget_tokens)
    if args.budget_period is not None:
        fields["budget_period"] = args.budget_period
    return KeyUpdate(**fields)


def state_dir():
    return IngressArgs().with_env(read_env()).effective_state_dir


class AdminApi:
    """A running server's admin endpoints, authenticated with HF_SERVER_API_KEY or admin.key."""

    def __init__(self, url: str):
        env = read_env()
        key = env.api_key.get_secret_value() if env.api_key else read_admin_key_file(state_dir())
        if not key:
            raise SystemExit("no admin key: set HF_SERVER_API_KEY or create <state_dir>/admin.key by starting the server")
        self._url, self._key = url.rstrip("/"), key

    def __call__(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            self._url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the operator's own server
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("error", {}).get("message", exc.reason)
            raise SystemExit(f"error {exc.code}: {detail}") from None


def run(args: argparse.Namespace) -> int:
    return answer(args, _run, lambda result: _print_human(args.verb, result), "API key")


def answer(args: argparse.Namespace, act: Callable[[argparse.Namespace], Any], show: Callable[[Any], None],
           thing: str) -> int:
    """Run a verb of `hfserve keys` or `teams`: its result as JSON (--json) or by `show`; exit 2 for
    bad input, 1 for a refusal (with the status the admin API would give) or no such `thing`."""
    try:
        result = act(args)
    except (ValidationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except APIError as exc:  # the store refused (the last admin key, a key in another team)
        print(f"error {exc.status_code}: {exc.message}", file=sys.stderr)
        return 1
    if result is None:
        print(f"error: no {thing} with id '{args.id}'", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)
    return 0


def _run(args: argparse.Namespace) -> Any:
    if args.url:
        api = AdminApi(args.url)
        if args.verb == "create":
            return api("POST", "/admin/keys", _new_key(args).model_dump(exclude_none=True))
        if args.verb == "list":
            return api("GET", "/admin/keys" + ("?include_revoked=true" if args.all else ""))["data"]
        if args.verb == "update":
            return api("PATCH", f"/admin/keys/{args.id}", _key_update(args).model_dump(exclude_unset=True))
        return api("GET" if args.verb == "info" else "DELETE", f"/admin/keys/{args.id}")
    store = KeyStore(state_dir() / "keys.db")
    try:
        if args.verb == "create":
            key, record = store.create(_new_key(args))
            return {"key": key, **record.model_dump()}
        if args.verb == "list":
            return [record.model_dump() for record in store.list(include_revoked=args.all)]
        if args.verb == "update":
            record = store.update(args.id, _key_update(args))
            return record.model_dump() if record else None
        # A static admin key (HF_SERVER_API_KEY) outlives every stored one: then none is the last.
        record = (store.get(args.id, include_revoked=False) if args.verb == "info"
                  else store.revoke(args.id, keep_an_admin=read_env().api_key is None))
        return record.model_dump() if record else None
    finally:
        store.close()


def _when(timestamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(timestamp).isoformat(timespec="seconds") if timestamp else "-"


def _print_human(verb: str, result: Any) -> None:
    if verb == "create":
        print(f"id:   {result['id']}\nkey:  {result['key']}\n(the key is shown only now; store it safely)")
        return
    records = result if isinstance(result, list) else [result]
    for r in records:
        state = "revoked" if r["revoked_at"] else "active"
        models = ",".join(r["allowed_models"]) if r["allowed_models"] is not None else "*"
        print(
            f"{r['id']}  {r['name']:<20} {state:<8} admin={r['admin']!s:<5} models={models} "
            f"rpm={r['rpm'] or 'default'} tpm={r['tpm'] or 'default'} expires={_when(r['expires_at'])} "
            + (f"budget={r['budget_tokens']}/{r['budget_period']} " if r.get("budget_tokens") else "") +
            f"requests={r['usage']['requests']} tokens={r['usage']['prompt_tokens'] + r['usage']['completion_tokens']}"
        )
