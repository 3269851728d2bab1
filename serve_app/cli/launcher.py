"""`hfserve serve`: a local Ray cluster with the dashboard, the config deployed, and a clean
shutdown that leaves no Ray process behind.

The deploy itself is what `serve run serve_config.yaml` does (ServeDeploySchema ->
serve_start -> deploy_apps), so the same file behaves the same under `serve deploy` on a
cluster. Before deploying, each model is prepared (converted and cached) in a child process
that prints its progress, so the first start shows what it is doing and later starts hit
the cache.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from contract.config import EnvOverrides, ModelAppArgs, model_call_env_vars, read_env
from serve_app.cli import haproxy
from serve_app.cli.deploy_plan import DeployConfigError, DeployPlan, plan_deploy
from serve_app.cli.haproxy import stop_orphaned_haproxies

Say = Callable[[str], None]

# The dashboard (and its job API) runs whatever code it is sent: loopback unless the operator
# names an interface with HF_SERVER_DASHBOARD_HOST, whatever the HTTP host is.
DEFAULT_DASHBOARD_HOST = "127.0.0.1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _say(message: str) -> None:
    print(f"[hfserve] {message}", flush=True)


def _prepare_in_child(name: str, args: ModelAppArgs) -> str:
    """Runs in a spawned process so torch/transformers memory is freed afterwards."""
    from deployments.server import prepare_for_this_node

    choice, prepared = prepare_for_this_node(name, args, lambda message: _say(f"{name}: {message}"))
    return f"{choice.backend} on {choice.device} ({choice.platform}); files in {prepared.openvino_dir or prepared.hf_dir}"


def prepare_models(models: dict[str, ModelAppArgs], say: Say = _say) -> None:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        for index, (name, args) in enumerate(models.items(), start=1):
            started = time.monotonic()
            say(f"[{index}/{len(models)}] {name}: preparing {args.source}")
            summary = pool.submit(_prepare_in_child, name, args).result()
            say(f"[{index}/{len(models)}] {name}: {summary} ({time.monotonic() - started:.1f}s)")


def bootstrap_admin_key(plan: DeployPlan, say: Say = _say) -> None:
    """First start with API keys on and no admin key: create one in <state_dir>/admin.key."""
    from serve_app.state.keys import ADMIN_KEY_FILE, KeyStore, ensure_admin_key

    for args in plan.ingresses:
        if not args.enable_auth:
            say("API keys are OFF (enable_auth: false): every endpoint is open")
            continue
        state_dir = args.effective_state_dir
        store = KeyStore(state_dir / "keys.db")
        try:
            created = ensure_admin_key(store, state_dir, static_admin=args.static_admin_key_sha256 is not None)
        finally:
            store.close()
        if created:
            say(f"created an admin API key in {created} (mode 0600)")
        if args.static_admin_key_sha256:
            say("API keys are on; the admin key is HF_SERVER_API_KEY")
        else:
            say(f"API keys are on; admin key: {state_dir / ADMIN_KEY_FILE}")
            say(f"  try: curl -H \"Authorization: Bearer $(cat {state_dir / ADMIN_KEY_FILE})\" {plan.base_url}/v1/models")


def _http_mode_environment(plan: DeployPlan, env: EnvOverrides, say: Say) -> dict[str, str]:
    """Ray's HAProxy mode unless HF_SERVER_HAPROXY=false (serve_app/cli/haproxy.py)."""
    stop_orphaned_haproxies(say)  # whichever mode: an orphan holds the HTTP port
    haproxy.remove_stale_node_files()  # what servers killed with their HAProxy left in /tmp
    if env.haproxy is False:
        return {haproxy.ENABLE_ENV: "0"}
    limits = haproxy.HeaderLimits.of(plan.ingresses)
    variables = haproxy.haproxy_environment(haproxy.wrapper_dir(env), limits, dict(os.environ))
    if variables is None:
        say("no HAProxy binary on this host (Ray bundles one for Linux): Ray's Python proxy serves HTTP")
        return {haproxy.ENABLE_ENV: "0"}
    return variables


_applied: dict[str, str | None] = {}  # what _apply_environment replaced, for shutdown_cluster


def _apply_environment(variables: dict[str, str]) -> None:
    """Serve reads these at import time in every Ray process (controller, proxy, replicas), and
    the cluster ray.init starts inherits this process's environment. Undone by shutdown_cluster,
    so that a later cluster in this process (the tests') starts from the caller's own."""
    for name, value in variables.items():
        _applied.setdefault(name, os.environ.get(name))
        os.environ[name] = value


def _restore_environment() -> None:
    while _applied:
        name, value = _applied.popitem()
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def dashboard_options(env: EnvOverrides) -> dict[str, Any]:
    """ray.init's dashboard arguments: 127.0.0.1:8265 unless HF_SERVER_DASHBOARD_HOST/_PORT say otherwise."""
    return {"include_dashboard": True, "dashboard_host": env.dashboard_host or DEFAULT_DASHBOARD_HOST,
            "dashboard_port": env.dashboard_port or 8265}


def dashboard_notes(url: str, host: str, environ: Mapping[str, str]) -> list[str]:
    """What `hfserve serve` says about the dashboard: where it is, how to get in, and what is
    exposed. Run after ray.init, which sets RAY_AUTH_MODE=token for a new cluster unless the
    operator chose a mode."""
    notes = [f"Ray dashboard:   {url}"]
    mode = environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "token":
        notes.append("  it asks for Ray's token: `ray get-auth-token` prints it")
    else:
        notes.append(f"  warning: Ray's token authentication is off (RAY_AUTH_MODE={mode or 'unset'}): "
                     "whoever reaches the dashboard can run code on this machine")
    if host not in LOOPBACK_HOSTS:
        notes.append(f"  warning: the dashboard listens on {host} (HF_SERVER_DASHBOARD_HOST), not only on this "
                     "machine: keep it on a private network")
    return notes


def start_cluster(plan: DeployPlan, env: EnvOverrides, say: Say = _say) -> str:
    """Start a local Ray cluster with the dashboard and deploy the plan; returns the dashboard URL."""
    import ray
    from ray.serve._private import api as serve_api  # see below: no public API applies a config
    from ray.serve.schema import ServeDeploySchema

    # Every Ray process, so that an ingress whose config replaced its ray_actor_options has it too.
    calls = {name: os.environ.get(name, value) for name, value in model_call_env_vars().items()}
    _apply_environment({**calls, **_http_mode_environment(plan, env, say)})
    context = ray.init(
        **dashboard_options(env),
        namespace="serve",
        log_to_driver=(env.log_level == "DEBUG"),
        configure_logging=True,
        logging_level="WARNING",
    )
    schema = ServeDeploySchema.model_validate(plan.config)
    # Ray 2.60 has no public Python API that applies a whole ServeDeploySchema (per-app args,
    # per-deployment overrides). `serve run config.yaml` does exactly these two calls
    # (ray/serve/scripts.py: _private_api.serve_start, then client.deploy_apps); the public
    # serve.start() returns no client, and the REST API that `serve deploy` uses authenticates
    # through private helpers too. Doing what `serve run` does keeps `hfserve serve` and
    # `serve run`/`serve deploy` of the same file equivalent.
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=None,
        global_logging_config=schema.logging_config,
    )
    client.deploy_apps(schema, _blocking=False)
    return f"http://{context.dashboard_url}" if context.dashboard_url else "(dashboard unavailable)"


def _get_json(url: str, timeout: float = 5.0, key: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own server
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def admin_key(plan: DeployPlan, env: EnvOverrides) -> str | None:
    """The admin key `hfserve serve` can send (HF_SERVER_API_KEY, else the admin.key it created):
    /ready names the models only to a caller with a key."""
    from serve_app.state.keys import read_admin_key_file

    if env.api_key is not None:
        return env.api_key.get_secret_value()
    for args in plan.ingresses:
        if args.enable_auth and (key := read_admin_key_file(args.effective_state_dir)):
            return key
    return None


def wait_until_ready(plan: DeployPlan, timeout_s: float = 1800.0, say: Say = _say, key: str | None = None) -> float:
    """Poll /ready, reporting each model's status as it changes (with `key`, where keys are on);
    fail fast on DEPLOY_FAILED."""
    from ray import serve

    started = time.monotonic()
    last: dict[str, str] = {}
    while time.monotonic() - started < timeout_s:
        failed = {
            name: app.message
            for name, app in serve.status().applications.items()
            if str(getattr(app.status, "value", app.status)) == "DEPLOY_FAILED"
        }
        if failed:
            details = "\n".join(f"  {name}: {message}" for name, message in failed.items())
            raise RuntimeError(f"deployment failed:\n{details}")
        try:
            code, body = _get_json(f"{plan.base_url}/ready", timeout=5, key=key)
        except (OSError, ValueError):
            code, body = 0, {}
        models = body.get("models") or {}
        for model, status in sorted(models.items()):
            if last.get(model) != status:
                say(f"{model}: {status} ({time.monotonic() - started:.1f}s)")
        last = dict(models)
        if code == 200:
            return time.monotonic() - started
        time.sleep(1.0)
    raise TimeoutError(f"not ready after {timeout_s:.0f}s")


def shutdown_cluster() -> None:
    import ray
    from ray import serve

    node_ids: list[str] = []
    try:
        if ray.is_initialized():
            node_ids = [node["NodeID"] for node in ray.nodes()]
            serve.shutdown()
    finally:
        ray.shutdown()
        _restore_environment()
        haproxy.remove_node_files(node_ids)  # Ray leaves each node's HAProxy files behind


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve_forever(config_path: Path | None = None, *, host: str | None = None, port: int | None = None) -> int:
    env = read_env()
    # Command-line flags beat HF_SERVER_HOST / HF_SERVER_PORT.
    env = env.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    path = Path(config_path or env.config or "serve_config.yaml")
    try:
        plan = plan_deploy(path, env)
    except DeployConfigError as exc:
        _say(f"error: {exc}")
        return 2
    for warning in plan.warnings:
        _say(f"warning: {warning}")
    prepare_models(plan.models)
    bootstrap_admin_key(plan)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _say("starting a local Ray cluster")
        dashboard = start_cluster(plan, env)
        # Ray installs its own handlers during init; ours must win so shutdown is clean.
        for sig in previous:
            signal.signal(sig, _raise_stop)
        took = wait_until_ready(plan, key=admin_key(plan, env))
        _say(f"ready in {took:.1f}s")
        _say(f"OpenAI base URL: {plan.base_url}/v1")
        for note in dashboard_notes(dashboard, dashboard_options(env)["dashboard_host"], os.environ):
            _say(note)
        _say("press Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except _Stop as stop:
        _say(f"received {stop}, shutting down")
        return 0
    except (RuntimeError, TimeoutError) as exc:
        _say(f"error: {exc}")
        return 1
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        shutdown_cluster()
        _say("stopped; no Ray processes left running")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve_forever())
