"""A model application that omits its task (tiny-bert-torch in conftest.py, a bare BertModel)
is deployed as the task its files name: in the deployed config, in /v1/models, and serving it."""

from __future__ import annotations


def test_an_omitted_task_is_inferred_and_served(server):
    assert server.plan.models["tiny-bert-torch"].task == "embedding"
    deployed = {app["name"]: app["args"] for app in server.plan.config["applications"]}
    assert deployed["tiny-bert-torch"]["task"] == "embedding"  # written out for the replicas
    with server.http() as http:
        cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
        assert cards["tiny-bert-torch"]["task"] == "embedding"
        chat = http.post("/v1/chat/completions", json={"model": "tiny-bert-torch", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 400 and "embedding model" in chat.json()["error"]["message"]
    embedding = server.openai().embeddings.create(model="tiny-bert-torch", input="hello")
    assert len(embedding.data[0].embedding) == 32
