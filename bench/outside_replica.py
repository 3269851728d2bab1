"""@serve.batch run in-process by the benches, outside any Serve replica."""

from __future__ import annotations

from types import SimpleNamespace


def allow_serve_batch() -> None:
    """@serve.batch asks the replica context for max_ongoing_requests; there is no replica here."""
    from ray import serve

    serve.get_replica_context = lambda: SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
