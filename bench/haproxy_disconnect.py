"""Does a client that leaves mid-stream cancel the stream, with and without Ray's HAProxy mode?

A tiny Serve app (FastAPI, no model) streams a chunk every 50 ms for 30 s. Per stream it notes
whether its body generator was cancelled, and whether the app's ASGI `receive` ever delivered
`http.disconnect`. A raw-socket client reads three chunks, then leaves: once with a plain
close() (FIN, or RST when unread data is still in the socket) and once with SO_LINGER 0 (RST).

Each mode runs in its own subprocess with its own local Ray cluster (Serve reads
RAY_SERVE_ENABLE_HA_PROXY at import time, in every Ray process):
- default: Ray's Python HTTP proxy;
- haproxy: RAY_SERVE_ENABLE_HA_PROXY=1 (HAProxy forwards straight to the ingress replica).

`.venv/bin/python -m bench.haproxy_disconnect [--modes default haproxy]`. Hold
/tmp/ray-tests.lock on a shared machine: it starts its own Ray cluster.
"""


import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import StreamingResponse

ROOT = Path(__file__).resolve().parents[1]
APP = "disconnect-probe"
STREAM_S = 30.0
CHUNK_EVERY_S = 0.05


def say(message: str) -> None:
    print(f"[haproxy_disconnect] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the app --------------------------------------------------------------------------------------

def build_app():
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Probe:
        def __init__(self):
            self.streams: dict[str, dict[str, Any]] = {}

        @api.get("/stream/{name}")
        async def stream(self, name: str, request: Request):
            record = self.streams[name] = {"chunks": 0, "ended": None, "receive_disconnect": None}
            started = time.monotonic()

            async def watch_receive():
                # What Starlette's StreamingResponse does too (ASGI spec 2.3): wait for
                # http.disconnect on receive. Recorded separately from the generator.
                message = await request.receive()
                record["receive_disconnect"] = round(time.monotonic() - started, 2) if message["type"] == "http.disconnect" else message["type"]

            watcher = asyncio.create_task(watch_receive())

            async def body():
                try:
                    while time.monotonic() - started < STREAM_S:
                        record["chunks"] += 1
                        yield f"data: {record['chunks']}\n\n".encode()
                        await asyncio.sleep(CHUNK_EVERY_S)
                    record["ended"] = "finished"
                except (asyncio.CancelledError, GeneratorExit) as exc:
                    record["ended"] = f"{type(exc).__name__} after {time.monotonic() - started:.2f} s"
                    raise
                finally:
                    watcher.cancel()

            return StreamingResponse(body(), media_type="text/event-stream")

        @api.get("/record/{name}")
        def record(self, name: str) -> dict:
            return self.streams.get(name, {})

    return Probe.bind()


# --- the client -----------------------------------------------------------------------------------

def read_chunks_then_leave(port: int, name: str, how: str, chunks: int = 3) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET /stream/{name} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n".encode())
    seen = b""
    while seen.count(b"data: ") < chunks:
        data = sock.recv(4096)
        if not data:
            raise RuntimeError(f"server closed the stream early: {seen[:200]!r}")
        seen += data
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif how == "shutdown":  # half-close: FIN, keep the socket open for reading
        sock.shutdown(socket.SHUT_WR)
        time.sleep(3)
    sock.close()


def get_json(port: int, path: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def run_mode(mode: str, wait_s: float) -> dict[str, Any]:
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=True, logging_level="WARNING")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(), name=APP, route_prefix="/")
        deadline = time.monotonic() + 60
        while True:  # HAProxy learns the replica's port a moment after serve.run returns
            try:
                get_json(port, "/record/none")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        results: dict[str, Any] = {}
        for how in ("close", "rst", "shutdown"):
            name = f"{mode}-{how}"
            read_chunks_then_leave(port, name, how)
            left = time.monotonic()
            record: dict[str, Any] = {}
            while time.monotonic() - left < wait_s:
                record = get_json(port, f"/record/{name}")
                if record.get("ended"):
                    break
                time.sleep(0.2)
            chunks_at_leave = 3
            record["cancelled"] = bool(record.get("ended")) and record["ended"] != "finished"
            record["chunks_after_leaving"] = record.get("chunks", 0) - chunks_at_leave
            results[how] = record
        return results
    finally:
        serve.shutdown()
        ray.shutdown()


def child(mode: str, wait_s: float) -> None:
    results = run_mode(mode, wait_s)
    print("RESULT " + json.dumps(results), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["default", "haproxy"], choices=["default", "haproxy"])
    parser.add_argument("--wait", type=float, default=8.0, help="seconds to wait for the cancellation")
    parser.add_argument("--child", choices=["default", "haproxy"], help=argparse.SUPPRESS)
    parser.add_argument("--extra-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="more environment for the haproxy mode (Ray's RAY_SERVE_HAPROXY_* knobs)")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.wait)
        return

    summary = {}
    for mode in args.modes:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_ENABLE_HA_PROXY")}
        if mode == "haproxy":
            env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
            env.update(dict(item.split("=", 1) for item in args.extra_env))
        say(f"mode {mode}: starting a local Ray cluster")
        proc = subprocess.run(
            [sys.executable, "-m", "bench.haproxy_disconnect", "--child", mode, "--wait", str(args.wait)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            say(f"mode {mode} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            summary[mode] = None
            continue
        summary[mode] = json.loads(lines[-1][len("RESULT "):])
        for how, record in summary[mode].items():
            say(f"mode {mode:8} client {how:8}: cancelled={record['cancelled']!s:5} "
                f"ended={record.get('ended')!s:32} receive saw disconnect after={record.get('receive_disconnect')} s, "
                f"chunks produced after the client left={record['chunks_after_leaving']}")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
