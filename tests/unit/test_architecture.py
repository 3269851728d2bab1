"""The shape of the house: the package dependency order, no HTTP framework in model
replicas' code, and modules small enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

# Each package may import only the packages before it.
ORDER = ["contract", "observability", "hardware", "deployments", "serve_app"]
MAX_MODULE_LINES = 450


def _imports(package: str) -> dict[str, set[str]]:
    """Our packages each module of `package` imports, type-checking-only imports included."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & set(ORDER)
    return found


def test_packages_import_only_packages_below_them():
    for position, package in enumerate(ORDER):
        allowed = set(ORDER[: position + 1])
        for module, imported in _imports(package).items():
            assert imported <= allowed, f"{module} imports {sorted(imported - allowed)}; {package} may use {sorted(allowed)}"


def test_a_model_replica_loads_no_http_framework():
    """ModelServer's module, and through it the contract, loads neither FastAPI nor Starlette.
    (Ray Serve itself imports Starlette, so the replica process has it anyway; what this holds
    is that our replica code does not depend on it: ModelServer is a plain class that
    serve_app.app wraps with serve.deployment.)"""
    code = "import sys, deployments.server; print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette'}))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_modules_stay_small():
    big = {
        str(path.relative_to(ROOT)): lines
        for package in ORDER
        for path in (ROOT / package).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"
