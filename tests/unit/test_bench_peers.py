"""`make bench`'s peers: Infinity in each CPU configuration, hfserve's ratios and targets against
the fastest one per metric, each side's engine and precision in the results and the table, and
vLLM measured after the warm-up hfserve gets, in the dtype its log names. No network, no Ray."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import chat_loads, chat_peer, infinity, peers
from bench.stats import EmbeddingRun, GenerationRun

TORCH32, TORCH16, OPTIMUM = infinity.CONFIGS


def embed(concurrency: int, inputs: int, requests: int, p99: float) -> EmbeddingRun:
    return EmbeddingRun(concurrency, inputs, requests, 10.0, p99 / 2, p99)


def run(config, single_requests: int, single_p99: float, batch_requests: int) -> infinity.InfinityRun:
    return infinity.InfinityRun(config, 12.0, embed(32, 1, single_requests, single_p99), embed(4, 32, batch_requests, 400.0))


# Each configuration wins something: bf16 the single-input rate, optimum the p99 and the batches.
RUNS = [run(TORCH32, 1500, 300.0, 80), run(TORCH16, 2000, 250.0, 90), run(OPTIMUM, 1800, 200.0, 120)]
SERVER = SimpleNamespace(ready_s=30.0, embed_single=embed(32, 1, 2400, 220.0), embed_batch=embed(4, 32, 240, 300.0))
HFSERVE = {"engine": "openvino", "device": "cpu", "precision": "bfloat16"}


def test_each_metric_is_won_by_its_fastest_configuration():
    names = {metric: r.config.name for metric, r in infinity.fastest(RUNS).items()}
    assert names == {
        "embed_c32x1_req_per_s": "torch-bfloat16",
        "embed_c32x1_inputs_per_s": "torch-bfloat16",
        "embed_c32x1_p99": "optimum-float32",  # the lowest p99, not the highest
        "embed_c4x32_req_per_s": "optimum-float32",
        "embed_c4x32_inputs_per_s": "optimum-float32",
        "embed_c4x32_p99": "torch-float32",  # a tie (400 ms each): the first listed
    }


def test_a_load_that_completed_nothing_never_wins():
    empty = infinity.InfinityRun(TORCH32, 1.0, EmbeddingRun(32, 1, 0, 10.0, float("nan")), embed(4, 32, 1, 1.0))
    assert infinity.fastest([empty, RUNS[1]])["embed_c32x1_p99"].config.name == "torch-bfloat16"


def test_ratios_keep_their_names_and_are_taken_against_the_fastest():
    found = infinity.ratios(SERVER, RUNS)
    assert found == {
        "embed_c32x1_req_per_s_vs_infinity": 1.2,  # 240 req/s over bf16's 200, not fp32's 150
        "embed_c32x1_inputs_per_s_vs_infinity": 1.2,
        "embed_c32x1_p99_vs_infinity": 1.1,  # 220 ms over optimum's 200
        "embed_c4x32_req_per_s_vs_infinity": 2.0,
        "embed_c4x32_inputs_per_s_vs_infinity": 2.0,
        "embed_c4x32_p99_vs_infinity": 0.75,
    }
    assert infinity.against(RUNS)["embed_c32x1_req_per_s_vs_infinity"] == "torch-bfloat16"
    assert infinity.targets(SERVER, RUNS) == {
        "embed_c32x1_req_per_s_vs_infinity": (1.2, ">=", 1.2),
        "embed_c32x1_p99_vs_infinity": (1.1, "<=", 1.5),
        "embed_c4x32_inputs_per_s_vs_infinity": (2.0, ">=", 2.0),
    }


def test_results_hold_every_configuration_with_its_engine_and_precision():
    got = json.loads(json.dumps(infinity.results(SERVER, RUNS, {})))  # what the results file holds
    assert list(got["configs"]) == ["torch-float32", "torch-bfloat16", "optimum-float32"]
    bf16 = got["configs"]["torch-bfloat16"]
    assert (bf16["engine"], bf16["dtype_flag"], bf16["precision"], bf16["ready_s"]) == ("torch", "bfloat16", "bfloat16", 12.0)
    assert bf16["embeddings"]["c32x1"]["requests_per_s"] == 200.0
    assert bf16["hfserve_over"]["embed_c32x1_req_per_s"] == 1.2
    assert got["configs"]["optimum-float32"]["engine"] == "optimum"
    assert got["configs"]["optimum-float32"]["dtype_flag"] is None
    assert got["fastest"]["embed_c32x1_req_per_s"] == "torch-bfloat16"
    assert got["fastest"]["embed_c4x32_inputs_per_s"] == "optimum-float32"
    assert "errors" not in got


def test_a_failed_configuration_is_reported_and_the_others_still_count(monkeypatch):
    started = []

    def fake(config, model_dir, seconds, say):
        started.append(config.name)
        if config.engine == "optimum":
            raise RuntimeError("No onnx files found")
        return next(r for r in RUNS if r.config == config)

    monkeypatch.setattr(peers, "embed_model_dir", lambda: Path("/model"))
    monkeypatch.setattr(infinity, "_measure_one", fake)
    runs, errors = infinity.measure(1.0, lambda _m: None)
    assert started == ["torch-float32", "torch-bfloat16", "optimum-float32"]
    assert [r.config.name for r in runs] == ["torch-float32", "torch-bfloat16"]
    assert errors == {"optimum-float32": "RuntimeError: No onnx files found"}
    assert infinity.results(SERVER, runs, errors)["errors"] == errors


def test_every_configuration_failing_fails_the_peer(monkeypatch):
    monkeypatch.setattr(peers, "embed_model_dir", lambda: Path("/model"))
    monkeypatch.setattr(infinity, "_measure_one", lambda *a: (_ for _ in ()).throw(RuntimeError("broken venv")))
    with pytest.raises(RuntimeError, match="every Infinity configuration failed"):
        infinity.measure(1.0, lambda _m: None)


def test_the_table_shows_every_side_with_engine_and_precision_and_names_the_fastest(capsys):
    infinity.print_table(SERVER, HFSERVE, RUNS, {"optimum-int8": "RuntimeError: x"})
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| embeddings"))
    assert header.split(" | ")[1:5] == ["hfserve", "infinity torch-float32", "infinity torch-bfloat16",
                                        "infinity optimum-float32"]
    engines = next(line for line in lines if line.startswith("| engine, precision"))
    assert "openvino, bfloat16" in engines
    assert "torch (PyTorch, SDPA attention), float32" in engines
    assert "torch (PyTorch, SDPA attention), bfloat16" in engines
    assert "optimum (ONNX Runtime, CPUExecutionProvider), float32" in engines
    single_rate = next(line for line in lines if line.startswith("| c=32 x 1: req/s"))
    assert single_rate.endswith("| 1.2 (torch-bfloat16) |")
    assert "240.0 | 150.0 | 200.0 | 180.0" in single_rate
    assert next(line for line in lines if line.startswith("| c=32 x 1: p50/p99")).endswith("p99 1.1 (optimum-float32) |")
    assert "(infinity optimum-int8 failed: RuntimeError: x)" in out
    assert all(line.count("|") == header.count("|") for line in lines if line.startswith("| c="))


def start_command(monkeypatch, tmp_path, config) -> dict:
    """What start_infinity runs for `config`, with the venv, export and process faked."""
    captured = {}
    monkeypatch.setattr(peers, "ensure_venv", lambda peer, say: tmp_path / "venv" / "bin" / "python")
    monkeypatch.setattr(peers, "onnx_export", lambda model_dir, python, say: tmp_path / "export")
    monkeypatch.setattr(peers, "free_port", lambda: 7997)
    monkeypatch.setattr(peers, "INFINITY", peers.PeerVenv("infinity", (), Path("c.txt")))
    monkeypatch.setattr(peers, "RESULTS", tmp_path)
    (tmp_path / "infinity.log").write_text("ready")

    def fake_start(peer, command, port, model, env, timeout_s, cwd=None, log=None):
        captured.update(command=command, env=env, cwd=cwd, log=log)
        return peers.RunningPeer(peer.name, None, "http://127.0.0.1:7997", 1.0)

    monkeypatch.setattr(peers, "_start", fake_start)
    model_dir = tmp_path / "model"
    (model_dir / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (model_dir / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    peers.start_infinity(model_dir, engine=config.engine, dtype=config.dtype, log=tmp_path / "infinity.log")
    captured["model_dir"] = model_dir
    return captured


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_torch_configurations_pass_their_engine_and_dtype(monkeypatch, tmp_path):
    for config in (TORCH32, TORCH16):
        got = start_command(monkeypatch, tmp_path, config)
        command = got["command"]
        assert (flag(command, "--engine"), flag(command, "--dtype")) == ("torch", config.dtype)
        assert flag(command, "--model-id") == str(got["model_dir"])
        assert got["cwd"] is None and "HF_HUB_CACHE" not in got["env"]


def test_the_optimum_configuration_serves_the_onnx_export_with_the_model_s_pooling(monkeypatch, tmp_path):
    got = start_command(monkeypatch, tmp_path, OPTIMUM)
    command = got["command"]
    assert flag(command, "--engine") == "optimum" and "--dtype" not in command
    # run inside the export as ".", Infinity's optimised copy kept beside it, mean pooling as the model says
    assert (flag(command, "--model-id"), got["cwd"]) == (".", tmp_path / "export")
    assert got["env"]["HF_HUB_CACHE"] == str(tmp_path / "export.hub")
    assert flag(command, "--pooling-method") == "mean"


def test_the_optimum_engine_s_failed_graph_optimisation_is_recorded(tmp_path):
    log = """WARNING  2026-12-07 15:32:42,438 infinity_emb WARNING:      utils_optimum.py:199
         Optimization failed with
         OptimizationConfig.__init__() got an unexpected
         keyword argument 'optimize_with_onnxruntime_only'.
         Going to use the unoptimized model.
"""
    details = peers.onnx_details(tmp_path / "export", log)
    assert details["graph_optimized"] is False and details["quantized"] is False
    assert details["graph_optimization_error"] == (
        "OptimizationConfig.__init__() got an unexpected keyword argument 'optimize_with_onnxruntime_only'")
    optimized = tmp_path / "export.hub" / "infinity_onnx" / "CPUExecutionProvider"
    optimized.mkdir(parents=True)
    (optimized / "model_optimized.onnx").write_bytes(b"")
    assert peers.onnx_details(tmp_path / "export", "ready")["graph_optimized"] is True


def test_vllm_s_dtype_is_read_from_its_engine_config_line():
    line = ("(EngineCore_0 pid=269) INFO 08-05 17:10:29 [core.py:73] Initializing a V1 LLM engine (v0.32.0) with "
            "config: model='/m', tokenizer='/m', trust_remote_code=False, dtype=torch.bfloat16, max_seq_len=8192, "
            "kv_cache_dtype=auto, device_config=cpu")
    assert chat_peer.logged_dtype("INFO starting\n" + line + "\n") == "bfloat16"
    assert chat_peer.logged_dtype("kv_cache_dtype=auto only") is None


def test_both_chat_servers_get_every_load_once_before_any_measured_round(monkeypatch):
    calls = []

    async def fake_chat_run(base, concurrency, rounds, steady=True, headers=None, extra=None):
        calls.append((base, concurrency, rounds, steady, headers))
        return GenerationRun(concurrency, rounds * concurrency, 64, 1.0, 10.0, 20.0)

    monkeypatch.setattr(chat_loads.http_load, "chat_run", fake_chat_run)
    loads = chat_loads.run("http://hfserve", 6, headers={"Authorization": "Bearer k"})
    hfserve_calls, calls[:] = list(calls), []
    chat_loads.run("http://vllm", 6)
    assert [c[1:4] for c in hfserve_calls] == [c[1:4] for c in calls] == [
        (1, 1, True), (16, 1, True), (16, 1, False),  # the warm-up: each load once
        (1, 6, True), (16, 6, True), (16, 6, False),  # then the measured rounds
    ]
    assert set(loads.chat) == {1, 16} and loads.burst.concurrency == 16 and loads.chat[1].concurrency == 1
    assert chat_loads.warmup_plan() == [
        {"concurrency": 1, "arrivals": "staggered", "requests": 2},
        {"concurrency": 16, "arrivals": "staggered", "requests": 32},
        {"concurrency": 16, "arrivals": "at once", "requests": 32},
    ]


def test_the_chat_peer_record_names_its_engine_dtype_and_warm_up(capsys):
    gen = GenerationRun(16, 96, 6144, 10.0, 100.0, 200.0)
    p = chat_peer.ChatPeerRuns("vllm", 90.0, {1: GenerationRun(1, 6, 384, 6.0, 30.0, 40.0), 16: gen}, gen, "bfloat16")
    got = chat_peer.results(p)
    assert (got["engine"], got["dtype"]) == ("vllm", "bfloat16")
    assert got["chat_warmup"] == chat_loads.warmup_plan()
    chat_peer.print_table({1: p.chat[1], 16: gen}, gen, p)
    assert "| vllm (bfloat16) | hfserve |" in capsys.readouterr().out
