"""Install a plug-in module into a folder as a separate package would be installed: the module
beside a dist-info folder whose entry_points.txt names its TASK in the `hfserve.tasks` group.
Putting the folder on sys.path (or PYTHONPATH) is then all it takes for hfserve to find it."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from contract import tasks
from contract.tasks import ENTRY_POINT_GROUP


def install_plugin(module_file: Path, site: Path, *, module: str, task: str, version: str = "0.1") -> Path:
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(module_file, site / f"{module}.py")
    dist_info = site / f"{module}-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{task} = {module}:TASK\n")
    return site


@contextlib.contextmanager
def on_path(site: Path, module: str) -> Iterator[Path]:
    """`site` on sys.path with the task table looking again, as a fresh interpreter would see
    it; afterwards, everything as it was."""
    sys.path.insert(0, str(site))
    tasks.refresh()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop(module, None)
        tasks.refresh()
