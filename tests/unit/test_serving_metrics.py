"""The catalogue, the recorder's checks, and what replicas and node actors record: time to
first token, inter-token latency, tokens, in-flight requests, engine gauges, utilisation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from contract.model_api import EngineStats
from deployments.serving_metrics import GenerationMeter, ReplicaMeter, metered
from hardware import utilization
from observability import catalogue
from observability.recorder import Recorder


class Sink(list):
    def __call__(self, spec, value, labels):
        self.append((spec.name, value, dict(labels)))

    def values(self, spec):
        return [value for name, value, _ in self if name == spec.name]


def test_the_catalogue_has_the_seeds_names_and_sane_definitions():
    seed = {"hf_server_requests_total", "hf_server_request_duration_seconds", "hf_server_models_loaded",
            "hf_server_model_load_duration_seconds", "hf_server_cache_hits_total", "hf_server_cache_misses_total",
            "hf_server_errors_total", "hf_server_hardware_utilization"}
    assert seed <= set(catalogue.BY_NAME)
    assert len(catalogue.BY_NAME) == len(catalogue.CATALOGUE)  # no name twice
    for spec in catalogue.CATALOGUE:
        assert spec.name.startswith("hf_server_")
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert (spec.kind == "histogram") == bool(spec.buckets), spec.name
        assert list(spec.buckets) == sorted(set(spec.buckets)), spec.name
        assert spec.help and len(set(spec.labels)) == len(spec.labels)
    assert catalogue.REQUESTS.labels == ("model", "endpoint", "status", "key_id")
    assert catalogue.CACHE_HITS.labels == ("model", "kind") and catalogue.ERRORS.labels == ("model", "endpoint", "type")


def test_the_recorder_refuses_wrong_labels_and_kinds():
    recorder = Recorder(sink=Sink())
    with pytest.raises(ValueError):
        recorder.inc(catalogue.REQUESTS, model="m", endpoint="/v1/completions", status="200")  # key_id missing
    with pytest.raises(ValueError):
        recorder.observe(catalogue.TIME_TO_FIRST_TOKEN, 0.1, model="m", raw="x")
    with pytest.raises(TypeError):
        recorder.set(catalogue.REQUESTS, 1, model="m", endpoint="e", status="200", key_id="")


def test_a_disabled_recorder_records_nothing():
    sink = Sink()
    recorder = Recorder(enabled=False, sink=sink)
    recorder.inc(catalogue.PROMPT_TOKENS, 5, model="m")
    recorder.observe(catalogue.TIME_TO_FIRST_TOKEN, 0.1, model="m")
    assert sink == []


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_ttft_once_per_request_and_inter_token_gaps_per_token_per_sequence():
    sink, clock = Sink(), Clock()
    meter = GenerationMeter(Recorder(sink=sink), "m", prompt_tokens=7, clock=clock)
    clock.now += 0.5
    meter.event(0, 0)  # the role chunk of a chat stream: no token yet
    clock.now += 0.25
    meter.event(0, 1)  # first token of sequence 0: TTFT 0.75 s
    clock.now += 0.1
    meter.event(1, 1)  # first token of sequence 1 (n=2): no second TTFT, no gap yet
    clock.now += 0.2
    meter.event(0, 3)  # two tokens in 0.3 s since sequence 0's last: 0.15 s each
    meter.finish()
    assert sink.values(catalogue.TIME_TO_FIRST_TOKEN) == [pytest.approx(0.75)]
    assert sink.values(catalogue.INTER_TOKEN_LATENCY) == [pytest.approx(0.15)]
    assert sink.values(catalogue.PROMPT_TOKENS) == [7]
    assert sink.values(catalogue.GENERATION_TOKENS) == [4]  # 3 + 1


def test_metered_events_close_the_engine_stream_when_the_client_leaves():
    sink, closed = Sink(), []

    async def events():
        try:
            for i in range(1, 100):
                yield SimpleNamespace(index=0), i
        finally:
            closed.append(True)

    async def run():
        stream = metered(events(), GenerationMeter(Recorder(sink=sink), "m", 3), lambda tokens: tokens)
        async for _, tokens in stream:
            if tokens == 3:
                break
        await stream.aclose()

    asyncio.run(run())
    assert closed == [True]
    assert sink.values(catalogue.GENERATION_TOKENS) == [3] and sink.values(catalogue.PROMPT_TOKENS) == [3]


def test_a_replica_reports_loads_requests_in_flight_and_engine_gauges():
    sink = Sink()
    meter = ReplicaMeter(Recorder(sink=sink), "m")
    meter.loaded(12.5)
    meter.started()
    meter.started()
    meter.ended()
    meter.engine(EngineStats(running_requests=3, waiting_requests=2, kv_cache_usage=0.25))
    meter.batch_observer("engine_step")(4)
    assert sink.values(catalogue.MODEL_LOAD_DURATION) == [12.5]
    assert sink.values(catalogue.ACTIVE_REQUESTS) == [1, 2, 1, 1] and meter.active == 1  # the last: the refresh
    assert sink.values(catalogue.ENGINE_RUNNING) == [3] and sink.values(catalogue.ENGINE_WAITING) == [2]
    assert sink.values(catalogue.KV_CACHE_USAGE) == [0.25]
    assert [labels for name, _, labels in sink if name == catalogue.BATCH_SIZE.name] == [{"model": "m", "kind": "engine_step"}]
    with pytest.raises(ValueError):
        meter.batch_observer("whatever")
    meter.unloaded()
    assert sink.values(catalogue.MODELS_LOADED) == [1, 1, 0]


@dataclass
class _Rates:
    gpu: int


@dataclass
class _Memory:
    used: int
    total: int


class FakeNvml:
    def nvmlDeviceGetCount(self):  # noqa: N802 - NVML's names
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):  # noqa: N802
        return index

    def nvmlDeviceGetUtilizationRates(self, handle):  # noqa: N802
        return _Rates(gpu=[90, 10][handle])

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        return _Memory(used=[30, 0][handle], total=120)


class BrokenNvml(FakeNvml):
    def nvmlDeviceGetUtilizationRates(self, handle):  # noqa: N802
        raise RuntimeError("GPU has fallen off the bus")


FAKE_PSUTIL = SimpleNamespace(cpu_percent=lambda interval=None: 50.0, virtual_memory=lambda: SimpleNamespace(percent=25.0))


def test_utilisation_of_the_cpu_and_every_gpu_as_fractions():
    assert utilization.sample(FAKE_PSUTIL, None) == [("cpu", "compute", 0.5), ("cpu", "memory", 0.25)]
    samples = utilization.sample(FAKE_PSUTIL, FakeNvml())
    assert ("cuda:0", "compute", 0.9) in samples and ("cuda:1", "compute", 0.1) in samples
    assert ("cuda:0", "memory", 0.25) in samples


def test_a_failing_gpu_read_keeps_the_cpu_samples():
    assert utilization.sample(FAKE_PSUTIL, BrokenNvml()) == [("cpu", "compute", 0.5), ("cpu", "memory", 0.25)]


@pytest.mark.parametrize("interval_ms,expected", [(2000, 2.0), (10_000, 5.0), (500, 1.0)])
def test_gauges_are_set_again_within_rays_eviction_time(monkeypatch, interval_ms, expected):
    """Ray's agent evicts a gauge not set within two report intervals: replicas and node actors
    set theirs once per interval (at most every 5 s, at least every 1 s)."""
    import ray

    from observability.recorder import gauge_refresh_s

    monkeypatch.setattr(ray, "_config", SimpleNamespace(metrics_report_interval_ms=lambda: interval_ms))
    assert gauge_refresh_s(5.0) == expected
