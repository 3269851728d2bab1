"""Other servers measured in the same `make bench` run, with the same load generator, so
hfserve's numbers come with a peer's taken on the same machine at the same time.

Infinity (infinity-emb 0.0.78, its torch engine) serves the very MiniLM directory hfserve
serves. It lives in a venv of its own under the bench cache: its pins (numpy<2, click<8.2,
sentence-transformers<4, ...) must not touch the project's venv.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from contract.config import default_cache_dir, read_env
from deployments.sources import parse_source

from .server import ROOT, free_port
from .workload import EMBED_MODEL, EMBED_SOURCE

INFINITY_SPEC = "infinity-emb[server,torch]==0.0.78"
# The local CPU build, named in the same pip command as infinity-emb: resolved on its own,
# infinity-emb's bare `torch>=2.2.1` can pull a multi-GB CUDA build.
TORCH_SPEC = "torch==2.13.0"
CONSTRAINTS = Path(__file__).with_name("infinity-constraints.txt")
LOG = ROOT / "bench" / "results" / "infinity.log"
INSTALL_LOG = ROOT / "bench" / "results" / "infinity-install.log"


def peers_dir() -> Path:
    """Beside the model conversions: HF_SERVER_CACHE_DIR, else ~/.cache/hfserve (XDG_CACHE_HOME)."""
    return (read_env().cache_dir or default_cache_dir()).expanduser() / "bench" / "peers"


def embed_model_dir() -> Path:
    """The directory hfserve serves for EMBED_MODEL (a package source is a plain HF directory,
    used as it is, with no conversion), so both servers load the same weights and tokenizer."""
    path = Path(parse_source(EMBED_SOURCE).location)
    if not path.is_dir():
        raise RuntimeError(f"{EMBED_SOURCE} is not a model directory: {path}")
    return path


def ensure_infinity_venv(say=print) -> Path:
    """The peer venv's python, installing it first if missing or made from other pins.

    The stamp is written last, so an interrupted install is redone from scratch rather than
    half-used; a venv cannot be moved into place after the fact (its scripts name its path)."""
    venv = peers_dir() / "infinity-venv"
    python = venv / "bin" / "python"
    wanted = hashlib.sha256(f"{sys.version_info[:2]} {TORCH_SPEC} {INFINITY_SPEC}\n".encode()
                            + CONSTRAINTS.read_bytes()).hexdigest()
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    say(f"installing {INFINITY_SPEC} into {venv} (a few minutes, once)")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    INSTALL_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(INSTALL_LOG, "w") as log:  # pip's chatter goes to a log, not between the bench's lines
        for step in ([sys.executable, "-m", "venv", str(venv)],
                     [str(python), "-m", "pip", "install", "-c", str(CONSTRAINTS), TORCH_SPEC, INFINITY_SPEC]):
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"installing the Infinity venv failed; see {INSTALL_LOG}")
    stamp.write_text(wanted)
    say(f"installed in {time.monotonic() - started:.0f}s")
    return python


@dataclass
class RunningPeer:
    name: str
    process: subprocess.Popen
    base: str  # what http_load takes: it adds /v1/embeddings
    ready_s: float

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)  # uvicorn's graceful shutdown, as Ctrl-C
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_infinity(model_dir: Path, *, timeout_s: float = 600, say=print) -> RunningPeer:
    """`infinity_emb v2` on a free port, serving `model_dir` as EMBED_MODEL under /v1, ready
    (it lists the model) or an error naming the log."""
    python = ensure_infinity_venv(say)
    port = free_port()
    command = [
        str(python.parent / "infinity_emb"), "v2",
        "--model-id", str(model_dir),
        "--served-model-name", EMBED_MODEL,  # the model id http_load sends
        "--engine", "torch",
        "--device", "cpu",  # the venv holds the CPU build of torch, whatever the machine has
        "--url-prefix", "/v1",  # OpenAI's paths: /v1/embeddings, /v1/models
        "--no-vector-disk-cache",  # no result cache (the default, said out loud): we measure the model path
        "--host", "127.0.0.1", "--port", str(port),
    ]
    # The directory is local: never reach for the hub, and send no usage statistics.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    LOG.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=open(LOG, "w"), stderr=subprocess.STDOUT,
                               start_new_session=True)  # its own process group, so stop() reaches its children
    base = f"http://127.0.0.1:{port}"
    running = RunningPeer("infinity", process, base, 0.0)
    # Infinity runs its own warm-up before uvicorn accepts connections, so a listed model
    # means a ready one.
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"infinity exited with {process.returncode}; see {LOG}")
        try:
            models = httpx.get(f"{base}/v1/models", timeout=5)
            if models.status_code == 200:
                served = [m["id"] for m in models.json()["data"]]
                if EMBED_MODEL not in served:
                    running.stop()
                    raise RuntimeError(f"infinity serves {served}, not {EMBED_MODEL!r}; see {LOG}")
                running.ready_s = time.monotonic() - started
                return running
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    running.stop()
    raise RuntimeError(f"infinity not ready after {timeout_s:.0f}s; see {LOG}")
