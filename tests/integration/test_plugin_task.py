"""A task from a separate package, found through the `hfserve.tasks` entry points and served
over HTTP with no other file of hfserve edited: the task table drives config validation,
ModelServer and the ingress's endpoint check."""

from __future__ import annotations

import time

import pytest
from ray import serve

from contract.config import ModelAppArgs
from deployments.server import model_server_deployment
from tests.conftest import ROOT
from tests.plugins.install import install_plugin, on_path

APP = "tiny-reverse"


@pytest.fixture
def reverse_model(server, tmp_path):
    site = install_plugin(ROOT / "tests/plugins/reverse_text_task.py", tmp_path / "site",
                          module="hfserve_reverse_text", task="reverse-text")
    with on_path(site, "hfserve_reverse_text"):
        args = ModelAppArgs(source=str(server.models["llama"]), task="reverse-text", backend="transformers")
        # The replica finds the plug-in the way an installed package is found: on its path.
        options = {"num_cpus": 0.05, "runtime_env": {"env_vars": {"PYTHONPATH": str(site)}}}
        serve.run(model_server_deployment().options(ray_actor_options=options).bind(args), name=APP, route_prefix=None)
        try:
            yield APP
        finally:
            serve.delete(APP)


def _wait_until_listed(http, model: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
        if cards.get(model, {}).get("status") == "ready" or time.monotonic() > deadline:
            return cards[model]
        time.sleep(0.2)


def test_a_plug_in_task_is_served_over_http(server, reverse_model):
    with server.http() as http:
        card = _wait_until_listed(http, reverse_model)
        assert card["task"] == "reverse-text" and card["status"] == "ready"
        chat = http.post("/v1/chat/completions", json={"model": reverse_model, "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 400
        assert chat.json()["error"]["code"] == "model_not_supported" and chat.json()["error"]["param"] == "model"

    completion = server.openai().completions.create(model=reverse_model, prompt=["hello world", "Ray Serve"])
    assert [choice.text for choice in completion.choices] == ["dlrow olleh", "evreS yaR"]
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    stream = server.openai().completions.create(model=reverse_model, prompt="abc", stream=True,
                                                stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "cba"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
