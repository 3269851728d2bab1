"""Usage per key, model and UTC day: recorded from each finished request, flushed to the key
store, reported by GET /admin/usage (JSON or CSV) and `hfserve usage`."""

from __future__ import annotations

import csv
import io
import time

import pytest

from serve_app.state.usage_book import DailyUsage, UsageBook, utc_day
from tests.unit.test_gateway import CHAT, bearer, new_key


def test_requests_errors_and_cache_hits_are_counted_per_key_model_and_day(api):
    client, _, admin = api
    key, key_id = new_key(client, admin)
    for _ in range(2):  # the second is a cache hit
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 200
    bad = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10**9}, headers=bearer(key))
    assert bad.status_code == 400
    assert client.post("/v1/embeddings", json={"model": "embed-model", "input": "x"}, headers=bearer(key)).status_code == 200
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=bearer(key)).status_code == 404
    client.portal.call(client.gateway.usage.flush)
    by_model = client.get(f"/admin/usage?key={key_id}&group_by=model", headers=admin).json()
    assert by_model["group_by"] == "model"
    rows = {row["model"]: row for row in by_model["data"]}
    assert set(rows) == {"chat-model", "embed-model"}  # a model that does not exist is not a row
    chat = rows["chat-model"]
    assert (chat["requests"], chat["errors"], chat["cache_hits"]) == (3, 1, 1)
    assert chat["prompt_tokens"] == 6 and chat["completion_tokens"] == 6  # the two answers, one of them cached
    today = utc_day(time.time())
    by_day = client.get(f"/admin/usage?key={key_id}&from={today}&to={today}", headers=admin).json()["data"]
    assert by_day == [{"day": today, "requests": 4, "prompt_tokens": rows["chat-model"]["prompt_tokens"]
                       + rows["embed-model"]["prompt_tokens"], "completion_tokens": 6, "errors": 1, "cache_hits": 1}]
    as_csv = client.get(f"/admin/usage?key={key_id}&group_by=key", headers={**admin, "Accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert list(csv.DictReader(io.StringIO(as_csv.text)))[0]["key"] == key_id


@pytest.mark.parametrize(("query", "param"), [
    ("group_by=org", "group_by"), ("from=2026-13-01", "from"), ("to=yesterday", "to"), ("to=0", "to"),
    ("from=2026-12-07&to=2026-12-01", "from"),
])
def test_a_bad_usage_query_is_a_400_naming_the_field(api, query, param):
    client, _, admin = api
    response = client.get(f"/admin/usage?{query}", headers=admin)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_only_an_admin_key_reads_usage(api):
    client, _, admin = api
    key, _ = new_key(client, admin)
    assert client.get("/admin/usage", headers=bearer(key)).status_code == 403


def test_a_book_adds_batches_and_filters_by_day(tmp_path):
    book = UsageBook(tmp_path / "keys.db")
    book.add([DailyUsage(key_id="k", model="m", day="2026-12-01", requests=1, prompt_tokens=5),
              DailyUsage(key_id="k", model="m", day="2026-12-02", requests=2, errors=1)])
    book.add([DailyUsage(key_id="k", model="m", day="2026-12-01", requests=1, cache_hits=1)])
    assert book.report("day", key_id="k") == [
        {"day": "2026-12-01", "requests": 2, "prompt_tokens": 5, "completion_tokens": 0, "errors": 0, "cache_hits": 1},
        {"day": "2026-12-02", "requests": 2, "prompt_tokens": 0, "completion_tokens": 0, "errors": 1, "cache_hits": 0}]
    assert book.report("key", start="2026-12-02", end="2026-12-31")[0]["requests"] == 2
    assert UsageBook(tmp_path / "keys.db").report("model") == [
        {"model": "m", "requests": 4, "prompt_tokens": 5, "completion_tokens": 0, "errors": 1, "cache_hits": 1}]


def test_hfserve_usage_asks_the_admin_api_and_prints_csv_or_a_table(monkeypatch, capsys):
    from serve_app.cli.main import main

    asked = []

    class Api:
        def __init__(self, url: str):
            asked.append(url)

        def __call__(self, method: str, path: str, body=None) -> dict:
            asked.append((method, path))
            return {"object": "list", "group_by": "model", "data": [
                {"model": "m", "requests": 2, "prompt_tokens": 5, "completion_tokens": 7, "errors": 1, "cache_hits": 0}]}

    monkeypatch.setattr("serve_app.cli.keys.AdminApi", Api)
    assert main(["usage", "--group-by", "model", "--from", "2026-12-01", "--csv", "--url", "http://h:1/gw"]) == 0
    assert asked == ["http://h:1/gw", ("GET", "/admin/usage?from=2026-12-01&group_by=model")]
    assert capsys.readouterr().out.splitlines() == ["model,requests,prompt_tokens,completion_tokens,errors,cache_hits",
                                                    "m,2,5,7,1,0"]
    assert main(["usage", "--group-by", "model"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "requests", "prompt_tokens", "completion_tokens", "errors", "cache_hits"]
    assert table[1].split() == ["m", "2", "5", "7", "1", "0"]
