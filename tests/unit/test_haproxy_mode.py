"""Ray's HAProxy mode as `hfserve serve` sets it up (serve_app/cli/haproxy.py), with the real
HAProxy binary Ray bundles: the wrapper's limits, the ports, and orphans left by a killed server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest

from contract.config import EnvOverrides
from contract.ingress_args import IngressArgs
from serve_app.cli import haproxy as haproxy_mode
from serve_app.cli import launcher
from serve_app.cli.haproxy import HeaderLimits
from tests.conftest import HAPROXY_INSTALL, free_port, needs_tool

BINARY = haproxy_mode.real_binary()
needs_haproxy = needs_tool(BINARY, "an HAProxy binary", HAPROXY_INSTALL)


def _config(path: Path, port: int) -> Path:
    """A frontend that answers 200 itself: what reaches it passed HAProxy's header limits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "defaults\n    mode http\n    timeout client 5s\n    timeout connect 5s\n    timeout server 5s\n"
        f"frontend web\n    bind 127.0.0.1:{port}\n    http-request return status 200 content-type text/plain string ok\n"
    )
    return path


def _wait_listening(port: int, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process is not None:
            assert process.poll() is None, process.stderr.read() if process.stderr else process.returncode
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_limits_leave_the_refusal_to_the_ingress():
    defaults = HeaderLimits(IngressArgs().max_header_count, IngressArgs().max_header_bytes)
    assert (defaults.maxhdr, defaults.bufsize) == (1024, 65536)  # 100 headers, 32 KiB
    assert (HeaderLimits(20, 2048).maxhdr, HeaderLimits(20, 2048).bufsize) == (1024, 16384)  # never below Ray's own
    assert HeaderLimits(10_000, 32 * 1024).maxhdr == 32767  # HAProxy's most


@needs_haproxy
def test_the_wrapper_lets_more_headers_through_than_haproxy_alone(tmp_path):
    port = free_port()
    config = _config(tmp_path / "site.cfg", port)
    wrapper = haproxy_mode.write_wrapper(tmp_path / "bin", BINARY, HeaderLimits(max_count=200, max_bytes=32 * 1024))
    assert wrapper == haproxy_mode.write_wrapper(tmp_path / "bin", BINARY, HeaderLimits(200, 32 * 1024))  # same limits, same file
    headers = {f"x-h{i}": "v" for i in range(150)}
    for binary, expected in ((BINARY, 400), (str(wrapper), 200)):  # HAProxy alone: 101 at most
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stderr=subprocess.PIPE, text=True)
        try:
            _wait_listening(port, process)
            assert httpx.get(f"http://127.0.0.1:{port}/", headers=headers).status_code == expected, binary
            assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
        finally:
            process.terminate()
            process.wait(timeout=10)


@needs_haproxy
def test_haproxys_own_5xx_carries_the_openai_error_body(tmp_path):
    """As Ray writes it: a node directory with its config and its text/plain 500.http for HAProxy's
    502/503/504; here no backend answers, so HAProxy refuses itself."""
    port, node = free_port(), tmp_path / "haproxy-serve" / "node-1"
    node.mkdir(parents=True)
    (node / "500.http").write_text("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                                   "Content-Length: 21\r\n\r\nInternal Server Error")
    config = node / "haproxy.cfg"
    config.write_text(
        "defaults\n    mode http\n    timeout client 5s\n    timeout connect 1s\n    timeout server 5s\n"
        + "".join(f"    errorfile {status} {node / '500.http'}\n" for status in (502, 503, 504))
        + f"frontend web\n    bind 127.0.0.1:{port}\n    default_backend replicas\n"
        f"backend replicas\n    server replica 127.0.0.1:{free_port()}\n"  # nothing listens there
    )
    wrapper = haproxy_mode.write_wrapper(tmp_path / "bin", BINARY, HeaderLimits(100, 32 * 1024))
    process = subprocess.Popen([str(wrapper), "-db", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(port, process)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={})
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "proxy_error") and "Retry" in error["message"]
    assert "Internal Server Error" not in response.text


@needs_haproxy
def test_taken_ports_are_replaced_and_an_operators_are_kept(tmp_path):
    holders = []
    try:
        for port in haproxy_mode.PORT_ENVS.values():
            holder = socket.socket()
            try:
                holder.bind(("0.0.0.0", port))
            except OSError:
                pass  # already taken by something else: as good for this test
            holders.append(holder)
        env = haproxy_mode.haproxy_environment(tmp_path, HeaderLimits(100, 32 * 1024), {})
        assert env is not None and env[haproxy_mode.ENABLE_ENV] == "1" and env[haproxy_mode.BUFSIZE_ENV] == "65536"
        for name, default in haproxy_mode.PORT_ENVS.items():
            assert int(env[name]) != default
        assert Path(env[haproxy_mode.BINARY_ENV]).parent == tmp_path
        assert env[haproxy_mode.DRAIN_ENV] == "2"  # not Ray's 30 s per stopping replica
        kept = haproxy_mode.haproxy_environment(tmp_path, HeaderLimits(100, 32 * 1024),
                                                {"RAY_SERVE_HAPROXY_STATS_PORT": "9999", haproxy_mode.DRAIN_ENV: "30"})
        assert not {"RAY_SERVE_HAPROXY_STATS_PORT", haproxy_mode.DRAIN_ENV} & set(kept)  # Ray reads the operator's own
    finally:
        for holder in holders:
            holder.close()


def test_the_launcher_turns_haproxy_mode_on_unless_told_not_to(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "stop_orphaned_haproxies", lambda say: [])
    monkeypatch.setattr(haproxy_mode, "remove_stale_node_files", lambda: [])  # not this machine's /tmp
    plan = SimpleNamespace(ingresses=[IngressArgs(max_header_count=300), IngressArgs()])
    off = launcher._http_mode_environment(plan, EnvOverrides(haproxy=False, cache_dir=tmp_path), print)
    assert off == {haproxy_mode.ENABLE_ENV: "0"}
    monkeypatch.setattr(haproxy_mode, "real_binary", lambda: None)  # a host with no HAProxy (macOS)
    said = []
    assert launcher._http_mode_environment(plan, EnvOverrides(cache_dir=tmp_path), said.append) == {haproxy_mode.ENABLE_ENV: "0"}
    assert "Python proxy" in said[0]
    monkeypatch.setattr(haproxy_mode, "real_binary", lambda: "/usr/sbin/haproxy")
    on = launcher._http_mode_environment(plan, EnvOverrides(cache_dir=tmp_path), print)
    assert on[haproxy_mode.ENABLE_ENV] == "1"
    wrapper = Path(on[haproxy_mode.BINARY_ENV])
    assert wrapper.parent == tmp_path / "haproxy" and "/usr/sbin/haproxy" in wrapper.read_text()
    assert "tune.http.maxhdr 1200" in next(wrapper.parent.glob("limits-*.cfg")).read_text()  # the larger ingress's


def test_the_launcher_undoes_its_environment_at_shutdown(monkeypatch):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "1234")
    monkeypatch.delenv(haproxy_mode.ENABLE_ENV, raising=False)
    launcher._apply_environment({haproxy_mode.ENABLE_ENV: "1", "RAY_SERVE_HAPROXY_STATS_PORT": "5678"})
    launcher._restore_environment()
    assert haproxy_mode.ENABLE_ENV not in os.environ and os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "1234"


ORPHAN_PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.argv[1], "-db", "-f", sys.argv[2]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
if sys.argv[3] == "exit":  # the child is re-parented, as when Ray's proxy actor is killed
    sys.exit(0)
child.wait()
"""


@needs_haproxy
def test_a_killed_servers_haproxy_is_stopped_and_a_live_ones_is_not(tmp_path):
    config_dir = tmp_path / "haproxy-serve"
    orphan_port, live_port = free_port(), free_port()
    orphan_config = _config(config_dir / "node-a" / "haproxy.cfg", orphan_port)
    live_config = _config(config_dir / "node-b" / "haproxy.cfg", live_port)
    # argv[0] "ray::HAProxyManager": the process title of the Ray actor that is HAProxy's parent in a cluster.
    orphaned = subprocess.run([sys.executable, "-c", ORPHAN_PARENT, BINARY, str(orphan_config), "exit"],
                              capture_output=True, text=True, timeout=30, check=True)
    orphan_pid = int(orphaned.stdout.split()[0])
    actor = subprocess.Popen(["ray::HAProxyManager", "-c", ORPHAN_PARENT, BINARY, str(live_config), "wait"],
                             executable=sys.executable, stdout=subprocess.PIPE, text=True)
    live_pid = int(actor.stdout.readline())
    try:
        for port in (orphan_port, live_port):
            _wait_listening(port)
        said = []
        assert haproxy_mode.stop_orphaned_haproxies(said.append, config_dir=config_dir) == [orphan_pid]
        assert not psutil.pid_exists(orphan_pid) or psutil.Process(orphan_pid).status() == psutil.STATUS_ZOMBIE
        assert str(orphan_pid) in said[0]
        assert not orphan_config.parent.exists() and live_config.exists()  # the killed server's files go with it
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", orphan_port), timeout=0.5)  # its port is free again
        assert psutil.Process(live_pid).is_running()
        assert httpx.get(f"http://127.0.0.1:{live_port}/").status_code == 200
        assert haproxy_mode.stop_orphaned_haproxies(said.append, config_dir=config_dir) == []
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(live_pid).kill()
        actor.wait(timeout=10)


@needs_haproxy
def test_haproxy_env_prints_what_a_cluster_node_needs(tmp_path, monkeypatch, capsys):
    from serve_app.cli.main import main

    config = tmp_path / "serve_config.yaml"
    config.write_text(
        "applications:\n"
        "  - name: ingress\n    route_prefix: /\n    import_path: serve_app.app:build_ingress_app\n"
        "    args: {max_header_count: 400, max_header_bytes: 65536}\n"
    )
    monkeypatch.setenv("HF_SERVER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(haproxy_mode.BINARY_ENV, raising=False)
    monkeypatch.delenv(haproxy_mode.DRAIN_ENV, raising=False)
    assert main(["haproxy-env", "--config", str(config)]) == 0
    exports = dict(line.removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert exports[haproxy_mode.ENABLE_ENV] == "1" and exports[haproxy_mode.BUFSIZE_ENV] == "131072"
    assert exports[haproxy_mode.DRAIN_ENV] == "2"
    assert not set(haproxy_mode.PORT_ENVS) & set(exports)  # a cluster's nodes keep Ray's ports
    wrapper = Path(exports[haproxy_mode.BINARY_ENV])
    assert wrapper.parent == tmp_path / "cache" / "haproxy" and os.access(wrapper, os.X_OK)
    assert "tune.http.maxhdr 1600" in next(wrapper.parent.glob("limits-*.cfg")).read_text()
    # The wrapper runs: HAProxy checks a config through it (-c) and accepts our global section.
    checked = subprocess.run([str(wrapper), "-c", "-f", str(_config(tmp_path / "site.cfg", free_port()))],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert main(["haproxy-env", "--config", str(tmp_path / "missing.yaml")]) == 2


@needs_haproxy
def test_a_stopped_nodes_haproxy_files_are_removed_and_a_running_ones_are_kept(tmp_path):
    config_dir = tmp_path / "haproxy-serve"
    port = free_port()
    running = subprocess.Popen([BINARY, "-db", "-f", str(_config(config_dir / "node-a" / "haproxy.cfg", port))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopped = _config(config_dir / "node-b" / "haproxy.cfg", free_port()).parent
    (stopped / "admin.sock.1.stderr.log").write_text("what Ray leaves behind")
    other_cluster = _config(config_dir / "node-c" / "haproxy.cfg", free_port()).parent
    try:
        _wait_listening(port, running)
        removed = haproxy_mode.remove_node_files(["node-a", "node-b", "node-gone"], config_dir, wait_s=0.3)
        assert removed == [stopped] and not stopped.exists()
        assert (config_dir / "node-a" / "haproxy.cfg").exists()  # its HAProxy still reads it
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        running.terminate()
        running.wait(timeout=10)
    assert haproxy_mode.remove_node_files(["node-a"], config_dir, wait_s=0.3) == [config_dir / "node-a"]
    assert sorted(path.name for path in config_dir.iterdir()) == ["node-c"] and other_cluster.exists()


@needs_haproxy
def test_stale_haproxy_files_go_at_start_unless_an_haproxy_reads_them_or_they_are_fresh(tmp_path):
    # A server SIGKILLed together with its HAProxy leaves a directory that neither its stop nor
    # the orphan check finds.
    config_dir = tmp_path / "haproxy-serve"
    hour_ago = time.time() - 2 * 3600

    def aged(directory: Path) -> Path:
        for path in [*directory.iterdir(), directory]:
            os.utime(path, (hour_ago, hour_ago))
        return directory

    port = free_port()
    read = _config(config_dir / "node-read" / "haproxy.cfg", port).parent
    running = subprocess.Popen([BINARY, "-db", "-f", str(read / "haproxy.cfg")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = _config(config_dir / "node-killed" / "haproxy.cfg", free_port()).parent
    (killed / "admin.sock.1.stderr.log").write_text("what Ray leaves behind")
    starting = _config(config_dir / "node-starting" / "haproxy.cfg", free_port()).parent  # written just now
    try:
        _wait_listening(port, running)
        aged(read), aged(killed)
        assert haproxy_mode.remove_stale_node_files(config_dir) == [killed] and not killed.exists()
        assert (read / "haproxy.cfg").exists() and starting.exists()
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200  # its HAProxy serves on
    finally:
        running.terminate()
        running.wait(timeout=10)
    assert haproxy_mode.remove_stale_node_files(tmp_path / "no-such-dir") == []
