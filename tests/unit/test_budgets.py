"""Token budgets: periods, the state's accounting through leases (across restarts), and what a
client of a key with a budget sees."""

from __future__ import annotations

import datetime
import time

import pytest

from serve_app.state.budgets import BudgetBook, check_period, period_bounds
from serve_app.state.keys import KeyStore, NewKey
from serve_app.state.rate_limiter import Limits, RateLimiter
from tests.unit.test_gateway import bearer, new_key


def utc(*parts: int) -> float:
    return datetime.datetime(*parts, tzinfo=datetime.UTC).timestamp()


def test_periods_are_utc_calendar_days_weeks_months_or_epoch_windows():
    now = utc(2026, 12, 31, 23, 30)  # a Thursday
    assert period_bounds("day", now) == (utc(2026, 12, 31), utc(2027, 1, 1))
    assert period_bounds("week", now) == (utc(2026, 12, 28), utc(2027, 1, 4))
    assert period_bounds("month", now) == (utc(2026, 12, 1), utc(2027, 1, 1))
    assert period_bounds("month", utc(2027, 2, 10)) == (utc(2027, 2, 1), utc(2027, 3, 1))
    assert period_bounds("12h", now) == (utc(2026, 12, 31, 12), utc(2027, 1, 1))
    assert period_bounds("90m", utc(2026, 1, 1, 1, 0)) == (utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 1, 30))


@pytest.mark.parametrize("period", ["fortnight", "0d", "1234567d", "30s", "-1d", "12 h", "012h", ""])
def test_a_period_that_is_none_of_these_is_refused(period):
    with pytest.raises(ValueError, match="budget_period must be"):
        check_period(period)


def limiter_over(store: KeyStore, wall) -> RateLimiter:
    return RateLimiter(time.monotonic, budgets=BudgetBook(store.budget_spent, store.set_budget_spent, wall))


def test_leases_spend_the_budget_refunds_return_it_and_it_survives_a_restart(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    now = [utc(2026, 12, 7, 12)]
    limits = Limits(rpm=1000, tpm=100_000, budget_tokens=100, budget_period="day")
    limiter = limiter_over(store, lambda: now[0])
    grant = limiter.lease("k", limits, 1, 60, 10, 80)
    assert (grant.tokens, grant.budget_left) == (80, 20)  # no more than the budget has left
    limiter.give_back("k", grant.lease_id, 0, 30)  # a settlement: 30 of them were not used
    refused = limiter_over(store, lambda: now[0]).lease("k", limits, 1, 60, 10, 60)  # a restarted actor
    assert refused.budget_exceeded and refused.requests == 0 and refused.budget_left == 50
    assert refused.retry_after_s == pytest.approx(12 * 3600)  # until the next UTC midnight
    now[0] = utc(2026, 12, 8, 0, 0, 1)
    assert limiter_over(store, lambda: now[0]).lease("k", limits, 1, 60, 10, 60).budget_left == 40  # a new day


def test_a_key_over_its_budget_gets_a_429_until_the_period_resets(api):
    client, _, admin = api
    key, key_id = new_key(client, admin, budget_tokens=50, budget_period="day")
    assert client.get(f"/admin/keys/{key_id}", headers=admin).json()["budget_period"] == "day"
    body = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 1}
    answers = [client.post("/v1/chat/completions", json=body, headers=bearer(key)) for _ in range(20)]
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert served and refused and all(a.status_code == 429 for a in refused)
    assert int(served[0].headers["x-ratelimit-remaining-budget-tokens"]) < 50
    error = refused[0].json()["error"]
    assert error["code"] == "budget_exceeded" and "per day" in error["message"]
    assert 1 <= int(refused[0].headers["retry-after"]) <= 86400
    spent = sum(a.json()["usage"]["total_tokens"] for a in served)
    assert spent <= 50  # the budget holds
    # Raising it lets the key go on at once; removing it removes the header too.
    assert client.patch(f"/admin/keys/{key_id}", json={"budget_tokens": 10_000}, headers=admin).status_code == 200
    assert client.post("/v1/chat/completions", json=body, headers=bearer(key)).status_code == 200
    removed = client.patch(f"/admin/keys/{key_id}", json={"budget_tokens": None}, headers=admin).json()
    assert (removed["budget_tokens"], removed["budget_period"]) == (None, None)
    again = client.post("/v1/chat/completions", json=body, headers=bearer(key))
    assert again.status_code == 200 and "x-ratelimit-remaining-budget-tokens" not in again.headers


def test_a_request_bigger_than_the_whole_budget_is_a_400(api):
    client, _, admin = api
    key, _ = new_key(client, admin, budget_tokens=10)
    response = client.post("/v1/chat/completions", headers=bearer(key), json={
        "model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100})
    assert response.status_code == 400 and response.json()["error"]["code"] == "request_too_large"
    assert "token budget per month" in response.json()["error"]["message"]


@pytest.mark.parametrize(("fields", "param"), [
    ({"budget_tokens": -1}, "budget_tokens"),
    ({"budget_tokens": 10**14}, "budget_tokens"),
    ({"budget_tokens": "lots"}, "budget_tokens"),
    ({"budget_tokens": 100, "budget_period": "fortnight"}, "budget_period"),
    ({"budget_tokens": 100, "budget_period": "0d"}, "budget_period"),
    ({"budget_tokens": 100, "budget_period": ""}, "budget_period"),
])
def test_a_bad_budget_is_a_400_naming_the_field_and_stores_nothing(api, fields, param):
    client, core, admin = api
    before = core.store.list()
    created = client.post("/admin/keys", json={"name": "b", **fields}, headers=admin)
    assert created.status_code == 400 and created.json()["error"]["param"] == param
    _, key_id = new_key(client, admin)
    patched = client.patch(f"/admin/keys/{key_id}", json=fields, headers=admin)
    assert patched.status_code == 400 and patched.json()["error"]["param"] == param
    assert [r.id for r in core.store.list()] == [r.id for r in before] + [key_id]
    assert core.store.get(key_id).budget_tokens is None


def test_a_budget_without_a_period_is_monthly(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    _, record = store.create(NewKey(name="m", budget_tokens=1000))
    assert (record.budget_tokens, record.budget_period) == (1000, "month")
