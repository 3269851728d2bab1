"""Unit tests run outside Ray Serve: what a replica would provide is stood in for here, and
what Serve would report (`serve`: FakeServe over FakeModels, tests/unit/fakes.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.unit.fakes import FakeModel, FakeServe, admin_client

CHAT_AND_EMBED = {"chat-model": "text-generation", "embed-model": "embedding"}


def pytest_configure(config):
    config.addinivalue_line("markers", "models(by_name): the models, {name: task}, the `serve` fixture runs")


@pytest.fixture(autouse=True)
def outside_a_replica(monkeypatch):
    """@serve.batch (the model tasks') asks the replica context for max_ongoing_requests; there
    is no replica here."""
    from ray import serve

    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)


@pytest.fixture
def serve(request):
    """Serve with one RUNNING FakeModel per model: those a test (or its module, with `pytestmark`)
    names with `@pytest.mark.models({name: task})`, else CHAT_AND_EMBED."""
    marker = request.node.get_closest_marker("models")
    by_name = marker.args[0] if marker is not None else CHAT_AND_EMBED
    return FakeServe({name: FakeModel(name, task) for name, task in by_name.items()})


@pytest.fixture
def api(serve, tmp_path):
    """admin_client over `serve`: (a TestClient, the state core, the admin key's headers)."""
    with admin_client(tmp_path, serve) as api:
        yield api
