"""The OpenAPI document against the real server, with schemathesis: every check, bounded,
every route (the run-time model lifecycle's too), with an admin key.

Steered at the real models (tests/integration/schemathesis_hooks.py): generated requests name
a model that serves the route (random names only ever meet the 404, tested on its own), so they
reach tokenizers and engines. What no schema can state (a prompt longer than this model's
context, a source that names nothing) is listed in tests/integration/schemathesis.toml.

A fixed seed keeps CI reproducible; `SCHEMATHESIS_SEED=<n>` explores other cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_gateway import create_key

ST = Path(sys.executable).parent / "st"
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261128")
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def fuzz_key(server) -> str:
    key, _ = create_key(server, admin=True, rpm=10_000_000, tpm=10_000_000_000)
    return key


def test_schemathesis_finds_nothing_with_every_check(server, fuzz_key):
    command = [
        str(ST), "--config-file", str(CONFIG), "run", f"{server.gateway_url}/openapi.json", "--url", server.gateway_url,
        "-H", f"Authorization: Bearer {fuzz_key}", "--seed", SEED, "--max-examples", "25",
        "--workers", "1", "--request-timeout", "60", "--no-color", "--checks", "all",
        # A connection the proxy drops while an earlier test's replaced ingress replica settles
        # is retried rather than ending the run before it starts.
        "--wait-for-schema", "30",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900,
                            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
                                 "PYTHONPATH": str(ROOT)})
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "33 selected / 33 total" in result.stdout, result.stdout[-3000:]


@pytest.fixture(scope="module", autouse=True)
def leave_no_aliases(server, fuzz_key):
    """The fuzzer may point run-time aliases at the shared models: they go with it, so the
    modules after this one list the models they expect."""
    yield
    import httpx

    with httpx.Client(base_url=server.gateway_url, timeout=30, headers={"Authorization": f"Bearer {fuzz_key}"}) as http:
        for row in http.get("/models/aliases").json()["data"]:
            if row["source"] == "runtime":
                assert http.delete(f"/models/aliases/{row['alias']}").status_code == 200
