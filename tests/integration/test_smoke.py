def test_models_listed(server):
    with server.http() as http:
        body = http.get("/v1/models").json()
    ids = {m["id"]: m for m in body["data"]}
    assert set(ids) == {"tiny-llama", "tiny-llama-hf", "tiny-bert", "tiny-bert-torch", "tiny-bert-fragile", "tiny-reranker",
                        "tiny-classifier"}
    assert ids["tiny-llama"]["task"] == "text-generation"
    assert all(m["status"] == "ready" for m in ids.values())
