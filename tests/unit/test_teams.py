"""Teams: keys sharing model access, RPM, TPM and a budget, with each key's own limits applying
too (the stricter wins); the store, the limiter, and what a member key's client sees."""

from __future__ import annotations

import time

import pytest

from serve_app.state.budgets import BudgetBook
from serve_app.state.keys import KeyStore, NewKey
from serve_app.state.rate_limiter import UNLIMITED, Limits, RateLimiter
from serve_app.state.teams import NewTeam, TeamStore
from tests.unit.test_gateway import CHAT, bearer, new_key


def member(rpm=100, tpm=10_000, team_rpm=UNLIMITED, team_tpm=UNLIMITED, team_budget=None, **own) -> Limits:
    team = Limits(team_rpm, team_tpm, team_budget, "day" if team_budget else None)
    return Limits(rpm, tpm, team_id="team_1", team=team, **own)


def test_a_team_window_is_shared_by_its_keys_and_the_stricter_limit_refuses():
    limiter = RateLimiter(time.monotonic)
    assert limiter.lease("key_a", member(team_rpm=3), 1, 1, 2, 1).requests == 2
    granted = limiter.lease("key_b", member(team_rpm=3), 1, 1, 5, 1)
    assert granted.requests == 1 and granted.remaining_requests == 0  # the team's third request
    refused = limiter.lease("key_b", member(team_rpm=3), 1, 1, 1, 1)
    assert refused.requests == 0 and refused.refused_by == "team" and refused.retry_after_s > 0
    assert limiter.lease("key_c", Limits(100, 10_000), 1, 1, 1, 1).requests == 1  # a key in no team is not held back
    # The key's own limit is the stricter one here.
    assert limiter.lease("key_d", member(rpm=1, team_rpm=1000), 1, 1, 1, 1).requests == 1
    assert limiter.lease("key_d", member(rpm=1, team_rpm=1000), 1, 1, 1, 1).refused_by == "key"


def test_what_a_lease_gives_back_returns_to_the_team_window_and_budget(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    limiter = RateLimiter(time.monotonic, budgets=BudgetBook(store.budget_spent, store.set_budget_spent, time.time))
    grant = limiter.lease("key_a", member(team_tpm=100, team_budget=150), 1, 80, 1, 80)
    assert (grant.tokens, grant.remaining_tokens, grant.budget_left) == (80, 20, 70)
    assert limiter.lease("key_b", member(team_tpm=100, team_budget=150), 1, 50, 1, 50).refused_by == "team"
    limiter.give_back("key_a", grant.lease_id, 0, 60)  # settled: 60 of the 80 were not used
    assert limiter.usage("team_1") == (1, 20)
    again = limiter.lease("key_b", member(team_tpm=100, team_budget=150), 1, 50, 1, 50)
    assert again.tokens == 50 and again.budget_left == 150 - 20 - 50
    spent = limiter.lease("key_b", member(team_tpm=10_000, team_budget=150), 1, 100, 1, 100)
    assert spent.budget_exceeded and spent.refused_by == "team" and spent.budget_left == 80


def test_the_stricter_limits_are_what_the_headers_show():
    assert member(rpm=100, team_rpm=10).effective() == Limits(10, 10_000)
    assert member(budget_tokens=500, budget_period="week", team_budget=100).effective() == Limits(100, 10_000, 100, "day")
    assert Limits(5, 6).effective() == Limits(5, 6)


@pytest.fixture
def store(tmp_path):
    keys = KeyStore(tmp_path / "keys.db")
    yield keys, TeamStore(keys)
    keys.close()


def test_a_key_is_in_one_team_and_a_refused_change_stores_nothing(store):
    keys, teams = store
    _, a = keys.create(NewKey(name="a"))
    _, b = keys.create(NewKey(name="b"))
    red = teams.create(NewTeam(name="red", keys=[a.id], rpm=10))
    assert red.keys == [a.id] and keys.get(a.id).team_id == red.id
    with pytest.raises(Exception, match="is in team") as conflict:
        teams.create(NewTeam(name="blue", keys=[b.id, a.id]))
    assert conflict.value.status_code == 409
    assert [team.name for team in teams.list()] == ["red"] and keys.get(b.id).team_id is None  # nothing stored
    with pytest.raises(Exception, match="No API key") as unknown:
        teams.add_keys(red.id, [b.id, "key_0000000000000000"])
    assert unknown.value.status_code == 404 and teams.get(red.id).keys == [a.id]
    assert teams.add_keys(red.id, [b.id]).keys == [a.id, b.id]
    keys.revoke(b.id)
    assert teams.get(red.id).keys == [a.id]  # a revoked key is no member
    with pytest.raises(Exception, match="not in team"):
        teams.remove_key(red.id, b.id)
    assert teams.delete(red.id).name == "red"
    assert teams.get(red.id) is None and keys.get(a.id).team_id is None  # its keys stay, in no team


def test_team_keys_share_its_models_and_rpm_over_http(api):
    client, _, admin = api
    key_a, id_a = new_key(client, admin, models=["chat-model", "embed-model"])
    key_b, id_b = new_key(client, admin)
    created = client.post("/admin/teams", json={"name": "search", "models": ["chat-model"], "rpm": 3,
                                                "keys": [id_a, id_b]}, headers=admin)
    assert created.status_code == 201, created.text
    team = created.json()
    assert team["keys"] == [id_a, id_b] and client.get(f"/admin/keys/{id_a}", headers=admin).json()["team_id"] == team["id"]
    # Model access: what the key and its team both allow.
    embed = client.post("/v1/embeddings", json={"model": "embed-model", "input": "x"}, headers=bearer(key_a))
    assert embed.status_code == 404
    assert [m["id"] for m in client.get("/v1/models", headers=bearer(key_b)).json()["data"]] == ["chat-model"]
    answers = [client.post("/v1/chat/completions", json={**CHAT, "seed": i}, headers=bearer(key))
               for i, key in enumerate([key_a, key_b, key_a, key_b])]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "3"  # the team's, the stricter
    assert answers[3].json()["error"]["message"].startswith("Team Rate limit reached on requests per min (RPM)")
    # Lifting the team's limit lets its keys go on at once; deleting it leaves the keys.
    assert client.patch(f"/admin/teams/{team['id']}", json={"rpm": None}, headers=admin).json()["rpm"] is None
    assert client.post("/v1/chat/completions", json={**CHAT, "seed": 9}, headers=bearer(key_b)).status_code == 200
    assert client.delete(f"/admin/teams/{team['id']}", headers=admin).status_code == 200
    assert client.get(f"/admin/teams/{team['id']}", headers=admin).status_code == 404
    assert client.post("/v1/embeddings", json={"model": "embed-model", "input": "x"},
                       headers=bearer(key_a)).status_code == 200
    client.portal.call(client.gateway.usage.flush)


def test_usage_groups_by_the_team_a_key_is_in(api):
    client, _, admin = api
    key_a, id_a = new_key(client, admin)
    key_b, id_b = new_key(client, admin)
    team = client.post("/admin/teams", json={"name": "ads", "keys": [id_a]}, headers=admin).json()
    for i, key in enumerate([key_a, key_a, key_b]):
        assert client.post("/v1/chat/completions", json={**CHAT, "seed": i}, headers=bearer(key)).status_code == 200
    client.portal.call(client.gateway.usage.flush)
    rows = client.get("/admin/usage?group_by=team", headers=admin).json()["data"]
    by_team = {row["team"]: row["requests"] for row in rows}
    assert by_team[team["id"]] == 2 and by_team[None] >= 1  # key_b (and the admin key) are in no team
    only = client.get(f"/admin/usage?team={team['id']}&group_by=key", headers=admin).json()["data"]
    assert [(row["key"], row["requests"]) for row in only] == [(id_a, 2)]


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "t", "budget_tokens": -5}, "budget_tokens"),
    ({"name": "t", "budget_tokens": 10**15}, "budget_tokens"),
    ({"name": "t", "rpm": 0}, "rpm"),
    ({"name": "t", "models": ["bad id!"]}, "models"),
    ({"name": "t", "keys": ["not-a-key"]}, "keys"),
    ({"name": "t", "metadata": {"x": "y" * 5000}}, "metadata"),
    ({"name": ""}, "name"),
])
def test_a_bad_team_is_a_400_naming_the_field_and_nothing_is_stored(api, body, param):
    client, _, admin = api
    response = client.post("/admin/teams", json=body, headers=admin)
    assert response.status_code == 400 and param in (response.json()["error"]["param"] or "")
    assert client.get("/admin/teams", headers=admin).json()["data"] == []


def test_team_membership_changes_that_cannot_be_made_change_nothing(api):
    client, _, admin = api
    _, key_id = new_key(client, admin)
    red = client.post("/admin/teams", json={"name": "red", "keys": [key_id]}, headers=admin).json()
    blue = client.post("/admin/teams", json={"name": "blue"}, headers=admin).json()
    moved = client.post(f"/admin/teams/{blue['id']}/keys", json={"keys": [key_id]}, headers=admin)
    assert moved.status_code == 409 and moved.json()["error"]["code"] == "key_in_team"
    twice = client.post(f"/admin/teams/{blue['id']}/keys", json={"keys": [key_id, key_id]}, headers=admin)
    assert twice.status_code == 400
    assert client.post("/admin/teams/team_0000000000000000/keys", json={"keys": [key_id]}, headers=admin).status_code == 404
    assert client.patch("/admin/teams/team_0000000000000000", json={"rpm": 5}, headers=admin).status_code == 404
    assert client.patch(f"/admin/teams/{red['id']}", json={}, headers=admin).status_code == 400
    assert client.delete(f"/admin/teams/{blue['id']}/keys/{key_id}", headers=admin).status_code == 404
    assert client.get(f"/admin/teams/{red['id']}", headers=admin).json()["keys"] == [key_id]
    assert client.get(f"/admin/teams/{blue['id']}", headers=admin).json()["keys"] == []
    removed = client.delete(f"/admin/teams/{red['id']}/keys/{key_id}", headers=admin)
    assert removed.status_code == 200 and removed.json()["keys"] == []
    key, _ = new_key(client, admin)
    assert client.get("/admin/teams", headers=bearer(key)).status_code == 403  # admin keys only


def test_the_cli_manages_teams_on_the_store(tmp_path, monkeypatch, capsys):
    import json

    from serve_app.cli.main import main

    monkeypatch.setenv("HF_SERVER_STATE_DIR", str(tmp_path))
    assert main(["keys", "--json", "create", "--name", "member"]) == 0
    key_id = json.loads(capsys.readouterr().out)["id"]
    assert main(["teams", "create", "--name", "ml", "--rpm", "30", "--budget-tokens", "1000", "--json"]) == 0
    team = json.loads(capsys.readouterr().out)
    assert (team["rpm"], team["budget_tokens"], team["budget_period"]) == (30, 1000, "month")
    assert main(["teams", "add", team["id"], key_id]) == 0
    assert f"keys={key_id}" in capsys.readouterr().out
    assert main(["teams", "update", team["id"], "--rpm", "none", "--models", "chat", "--json"]) == 0
    assert (lambda t: (t["rpm"], t["allowed_models"]))(json.loads(capsys.readouterr().out)) == (None, ["chat"])
    assert main(["teams", "update", team["id"], "--budget-tokens", "-1"]) == 2
    assert "budget_tokens" in capsys.readouterr().err
    assert main(["teams", "remove", team["id"], key_id]) == 0 and "keys=-" in capsys.readouterr().out
    assert main(["teams", "delete", team["id"]]) == 0
    assert main(["teams", "info", team["id"]]) == 1
