"""`hfserve serve | discover | hardware | haproxy-env | status | models | usage | keys | teams`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from serve_app.cli.launcher import serve_forever

    return serve_forever(Path(args.config) if args.config else None, host=args.host, port=args.port)


def _discover(args: argparse.Namespace) -> int:
    from serve_app.cli.discover import run

    return run(args)


def _hardware(args: argparse.Namespace) -> int:
    from serve_app.cli.hardware import cluster_or_local_reports, render

    reports, where = cluster_or_local_reports(args.address)
    if args.json:
        print(json.dumps({"source": where, "nodes": [r.model_dump() for r in reports]}, indent=2))
    else:
        print(render(reports, where))
    return 0


def _status(args: argparse.Namespace) -> int:
    from serve_app.cli.status import run

    return run(args)


def _models(args: argparse.Namespace) -> int:
    from serve_app.cli.models import run

    return run(args)


def _usage(args: argparse.Namespace) -> int:
    from serve_app.cli.usage import run

    return run(args)


def _teams(args: argparse.Namespace) -> int:
    from serve_app.cli.teams import run

    return run(args)


def _keys(args: argparse.Namespace) -> int:
    from serve_app.cli.keys import run

    return run(args)


def _haproxy_env(args: argparse.Namespace) -> int:
    """What `hfserve serve` sets for Ray's HAProxy mode, for a cluster started with `ray start`."""
    from contract.config import read_env
    from serve_app.cli import haproxy
    from serve_app.cli.deploy_plan import DeployConfigError, plan_deploy

    env = read_env()
    path = Path(args.config or env.config or "serve_config.yaml")
    ingresses = []  # a node without the config (a worker): the ingress's default limits
    if args.config or env.config or path.exists():
        try:
            ingresses = plan_deploy(path, env).ingresses
        except DeployConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    variables = haproxy.haproxy_environment(haproxy.wrapper_dir(env), haproxy.HeaderLimits.of(ingresses),
                                                 dict(os.environ), move_taken_ports=False)
    if variables is None:
        print("error: no HAProxy binary on this host (Ray bundles one for Linux; or put haproxy on PATH)", file=sys.stderr)
        return 1
    sys.stdout.write(haproxy.as_exports(variables))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hfserve", description="OpenAI-compatible HF model server on Ray Serve")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start a local Ray cluster and serve a config until Ctrl-C")
    serve.add_argument("--config", help="serve_config.yaml to deploy (default HF_SERVER_CONFIG or ./serve_config.yaml)")
    serve.add_argument("--host", help="bind address (HF_SERVER_HOST)")
    serve.add_argument("--port", type=int, help="HTTP port (HF_SERVER_PORT)")
    serve.set_defaults(func=_serve)

    discover = commands.add_parser(
        "discover", help="the tasks this server can serve: endpoints, engines, and the models of a config that serve each"
    )
    discover.add_argument("--config", help="serve_config.yaml whose models to list (default HF_SERVER_CONFIG or "
                          "./serve_config.yaml, when it exists)")
    discover.add_argument("--url", help="also list the models a running server reports (uses the admin key)")
    discover.add_argument("--json", action="store_true", help="machine-readable output")
    discover.set_defaults(func=_discover)
    hardware = commands.add_parser(
        "hardware", help="every node's hardware in a running Ray cluster (this machine's when none runs)"
    )
    hardware.add_argument("--json", action="store_true", help="machine-readable output")
    hardware.add_argument("--address", default="auto", help="Ray cluster address (default: RAY_ADDRESS or the local one)")
    hardware.set_defaults(func=_hardware)
    haproxy_env = commands.add_parser(
        "haproxy-env", help="the environment for Ray's HAProxy mode with this config's limits, as `export` lines: "
        "eval \"$(hfserve haproxy-env)\" before `ray start` on each node of a cluster")
    haproxy_env.add_argument("--config", help="serve_config.yaml whose ingress limits to use (default HF_SERVER_CONFIG "
                             "or ./serve_config.yaml)")
    haproxy_env.set_defaults(func=_haproxy_env)
    status = commands.add_parser(
        "status", help="a running server's models, replicas, nodes and cache as a table (uses the admin key)"
    )
    status.add_argument("--url", default="http://127.0.0.1:8000", help="the server (or its gateway prefix)")
    status.add_argument("--json", action="store_true", help="the raw /status JSON")
    status.set_defaults(func=_status)

    from serve_app.cli.models import add_parser as add_models_parser
    from serve_app.cli.teams import add_parser as add_teams_parser
    from serve_app.cli.usage import add_parser as add_usage_parser

    add_usage_parser(commands)
    commands.choices["usage"].set_defaults(func=_usage)
    add_models_parser(commands)
    commands.choices["models"].set_defaults(func=_models)

    keys = commands.add_parser("keys", help="manage API keys (on the store, or through --url)")
    keys.add_argument("--url", help="a running server: go through its admin API with the admin key")
    keys.add_argument("--json", action="store_true", help="machine-readable output")
    verbs = keys.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create a key; prints it once")
    create.add_argument("--name", required=True)
    create.add_argument("--models", help="comma-separated model ids the key may use (default: all)")
    create.add_argument("--rpm", type=int, help="requests per minute (default: the server's)")
    create.add_argument("--tpm", type=int, help="tokens per minute (default: the server's)")
    create.add_argument("--admin", action="store_true", help="may use /admin, /status and /metrics")
    create.add_argument("--expires", help="lifetime, e.g. 30d, 12h, 90m")
    create.add_argument("--budget-tokens", type=int, help="tokens the key may spend per --budget-period")
    create.add_argument("--budget-period", help="day, week, month (default) or a duration such as 12h")
    listing = verbs.add_parser("list", help="every active or expired key, without secrets")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    info = verbs.add_parser("info", help="one key with its usage")
    info.add_argument("id")
    update = verbs.add_parser("update", help="change a key, keeping its secret (takes effect within 2 s)")
    update.add_argument("id")
    update.add_argument("--name")
    update.add_argument("--models", help="comma-separated model ids, or '*' for all")
    update.add_argument("--rpm", help="requests per minute, or 'default'")
    update.add_argument("--tpm", help="tokens per minute, or 'default'")
    update.add_argument("--expires", help="lifetime from now (30d, 12h, 90m), or 'never'")
    update.add_argument("--metadata", help="a JSON object that replaces the key's")
    update.add_argument("--budget-tokens", help="tokens per --budget-period, or 'none'")
    update.add_argument("--budget-period", help="day, week, month or a duration such as 12h")
    revoke = verbs.add_parser("revoke", help="revoke a key (takes effect within 2 s)")
    revoke.add_argument("id")
    for sub in (create, listing, info, update, revoke):
        sub.add_argument("--url", default=argparse.SUPPRESS, help="as above")
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="as above")
    keys.set_defaults(func=_keys)
    add_teams_parser(commands)
    commands.choices["teams"].set_defaults(func=_teams)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
