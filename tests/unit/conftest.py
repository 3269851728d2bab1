"""Unit tests run outside Ray Serve: what a replica would provide is stood in for here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(autouse=True)
def outside_a_replica(monkeypatch):
    """@serve.batch (the model tasks') asks the replica context for max_ongoing_requests; there
    is no replica here."""
    from ray import serve

    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
