"""Structured outputs' cost on the server: chat at c=16 with a JSON schema against the same
requests without one (tokens/s, the same prompts and token budget), and the time a new schema
adds to its first request (fresh schemas against the same ones repeated, c=1, unstreamed).
Part of `make bench`'s server phase; `python -m bench.structured` runs it alone."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import httpx

from hardware.detect import cpu_info

from . import http_load, server
from .stats import GenerationRun, ratio, unused
from .workload import CHAT_MODEL, chat_messages

TARGET = 0.8  # constrained over unconstrained tokens/s, issue 23


def schema(tag: str = "answer") -> dict:
    """An enum and a nested object, as an application asks for; `tag` makes a schema new."""
    return {"type": "object", "additionalProperties": False, "required": [tag, "detail"], "properties": {
        tag: {"type": "string", "maxLength": 200},
        "detail": {"type": "object", "additionalProperties": False, "required": ["mood", "score"],
                   "properties": {"mood": {"enum": ["good", "bad", "neutral"]}, "score": {"type": "integer"}}}}}


def response_format(tag: str = "answer") -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema(tag)}}}


def throughput(base: str, headers: dict, rounds: int) -> tuple[GenerationRun, GenerationRun]:
    plain = asyncio.run(http_load.chat_run(base, 16, rounds, headers=headers))
    constrained = asyncio.run(http_load.chat_run(base, 16, rounds, headers=headers, extra=response_format()))
    return plain, constrained


def compile_ms(base: str, headers: dict, tries: int = 5) -> dict[str, float]:
    """p50 ms of a request with a schema never seen before, and of the same request again."""
    fresh, repeated = [], []
    with httpx.Client(base_url=base, headers={**headers, **http_load.NO_CACHE}, timeout=120) as client:
        for i in range(tries):
            body = {"model": CHAT_MODEL, "messages": chat_messages(i), "max_tokens": 16, "temperature": 0,
                    **response_format(f"a{uuid.uuid4().hex[:8]}")}
            for times in (fresh, repeated):
                started = time.perf_counter()
                client.post("/v1/chat/completions", json=body).raise_for_status()
                times.append((time.perf_counter() - started) * 1e3)
    first, again = statistics.median(fresh), statistics.median(repeated)
    return {"new_schema_p50_ms": round(first, 1), "same_schema_p50_ms": round(again, 1),
            "compile_ms": round(first - again, 1)}


def results(plain: GenerationRun, constrained: GenerationRun, compiled: dict[str, float]) -> dict:
    tokens = ratio(constrained.tokens_per_s, plain.tokens_per_s)
    return {"chat_c16": plain.as_dict(), "chat_c16_json_schema": constrained.as_dict(),
            "json_schema_tokens_ratio": tokens, "target": TARGET, "target_met": tokens >= TARGET, **compiled}


def print_lines(found: dict) -> None:
    plain, constrained = found["chat_c16"], found["chat_c16_json_schema"]
    print(f"| chat tok/s c=16, JSON schema / none | {constrained['tokens_per_s']:.0f} / {plain['tokens_per_s']:.0f} | "
          f"{found['json_schema_tokens_ratio']} (target >= {TARGET}) |")
    print(f"| chat TTFT p50 ms c=16, JSON schema / none | {constrained['ttft_p50_ms']:.0f} / {plain['ttft_p50_ms']:.0f} | |")
    print(f"| new schema's first request / same schema again, p50 ms (c=1) | {found['new_schema_p50_ms']:.0f} / "
          f"{found['same_schema_p50_ms']:.0f} | compile ~{found['compile_ms']:.0f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(server.ROOT / "serve_config.yaml"))
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    running = server.start(Path(args.config))
    try:
        plain, constrained = throughput(running.base, running.headers, args.rounds)
        found = results(plain, constrained, compile_ms(running.base, running.headers))
    finally:
        running.stop()
    found = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": {"cpu": cpu_info().model, "cpus": os.cpu_count()}, **found}
    out = unused(server.ROOT / "bench" / "results" / f"structured-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps(found, indent=2) + "\n")
    print(f"\nCPU: {found['machine']['cpu']} ({found['machine']['cpus']} cores); {out.relative_to(server.ROOT)}\n")
    print("| measurement | value | ratio |\n|---|---|---|")
    print_lines(found)


if __name__ == "__main__":
    main()
