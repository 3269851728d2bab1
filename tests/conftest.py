"""Shared test helpers. Tiers: tests/unit (no Ray), tests/integration (real Ray Serve and
tiny models built at test time), tests/cluster (two Ray nodes), tests/e2e (the default config with the packaged models)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "cluster" in parts:
            item.add_marker(pytest.mark.cluster)
        elif "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
