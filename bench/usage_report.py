"""How fast GET /admin/usage answers from a month of usage: 1,000 keys (in 100 teams of 10) x
10 models x 30 UTC days (300,000 rows) in a fresh keys.db, each report timed as the state actor
runs it (UsageBook.report), best of three.

    .venv/bin/python -m bench.usage_report    (results: bench/results/usage-report-<date>.json)
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from hardware.detect import cpu_info
from serve_app.state.keys import KeyStore
from serve_app.state.usage_book import DailyUsage, UsageBook

from .stats import unused

ROOT = Path(__file__).resolve().parent.parent
KEYS, MODELS, DAYS, TEAM_SIZE = 1000, 10, 30, 10
TARGET_S = 1.0  # issue 26: a month of 1,000 keys x 10 models answers in under 1 s


def main() -> None:
    first = datetime.date(2026, 11, 1)
    days = [(first + datetime.timedelta(days=d)).isoformat() for d in range(DAYS)]
    with tempfile.TemporaryDirectory() as scratch:
        keys = KeyStore(Path(scratch) / "keys.db")
        with keys.transaction() as db:  # the keys themselves, for the team reports (a key's team is its row's)
            db.executemany("INSERT INTO api_keys (id, key_sha256, name, created_at, team_id) VALUES (?, ?, ?, 0, ?)",
                           [(f"key_{k:04d}", f"sha-{k}", f"k{k}", f"team_{k // TEAM_SIZE:03d}") for k in range(KEYS)])
        keys.close()
        book = UsageBook(Path(scratch) / "keys.db")
        started = time.perf_counter()
        for day in days:
            book.add([DailyUsage(key_id=f"key_{k:04d}", model=f"model-{m}", day=day, requests=k % 7 + 1,
                                 prompt_tokens=100 + k, completion_tokens=50 + m, errors=k % 3 == 0, cache_hits=m % 2)
                      for k in range(KEYS) for m in range(MODELS)])
        filled_s = time.perf_counter() - started
        reports = {
            "month by key": {"group_by": "key", "start": days[0], "end": days[-1]},
            "month by model": {"group_by": "model", "start": days[0], "end": days[-1]},
            "month by team": {"group_by": "team", "start": days[0], "end": days[-1]},
            "one team by key": {"group_by": "key", "team_id": "team_050"},
            "month by day": {"group_by": "day", "start": days[0], "end": days[-1]},
            "one key by day": {"group_by": "day", "key_id": "key_0500"},
            "one model by key": {"group_by": "key", "model": "model-3"},
        }
        timings = {}
        for name, query in reports.items():
            best = min(_timed(book, query) for _ in range(3))
            timings[name] = {"seconds": round(best[0], 4), "rows": best[1]}
            print(f"{name}: {best[0] * 1000:.1f} ms, {best[1]} rows")
    result = {
        "machine": {"cpu": cpu_info().model, "cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": KEYS * MODELS * DAYS, "fill_s": round(filled_s, 2), "reports": timings,
        "met": {f"every report under {TARGET_S} s": all(t["seconds"] < TARGET_S for t in timings.values())},
    }
    out = unused(ROOT / "bench" / "results" / f"usage-report-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["met"]), f"results: {out}")


def _timed(book: UsageBook, query: dict) -> tuple[float, int]:
    group_by = query.pop("group_by")
    started = time.perf_counter()
    rows = book.report(group_by, **query)
    elapsed = time.perf_counter() - started
    query["group_by"] = group_by
    return elapsed, len(rows)


if __name__ == "__main__":
    main()
