from tests.integration.conftest import MODELS


def test_models_listed(server):
    with server.http() as http:
        body = http.get("/v1/models").json()
    ids = {m["id"]: m for m in body["data"]}
    assert set(ids) == set(MODELS)
    assert ids["tiny-llama"]["task"] == "text-generation"
    assert all(m["status"] == "ready" for m in ids.values())
