"""The OpenVINO engine core's message loop with a stand-in pipeline: a request whose settings
the pipeline refuses ends that one sequence with a refusal; the core and every other sequence
go on (one caller's bad request must never take the engine down for everyone). A request that
asks for log-probabilities gets one per token in its step updates."""

from __future__ import annotations

import pytest

pytest.importorskip("openvino_genai")

import dataclasses  # noqa: E402

from contract.engine import SamplingParams  # noqa: E402
from deployments.engines.openvino_core import EngineCore  # noqa: E402

SAMPLING = dataclasses.asdict(SamplingParams(max_tokens=4, temperature=0.0, seed=1))  # as the replica sends it


class FakeHandle:
    def __init__(self):
        self.reads = [[7], [8]]
        self.logprobs = [[-0.5], [-1.25]]

    def can_read(self):
        return bool(self.reads)

    def read(self):
        class Output:
            generated_ids = self.reads.pop(0)
            generated_log_probs = self.logprobs.pop(0)
            finish_reason = None

        return {0: Output()}

    def get_status(self):
        import openvino_genai as ov_genai

        return ov_genai.GenerationStatus.RUNNING

    def cancel(self):
        pass


class FakePipeline:
    def __init__(self):
        self.added = []
        self.configs = {}

    def add_request(self, request_id, tensor, config):
        if config.top_p == 0.5:
            raise RuntimeError("Check 'top_p > 0' failed")
        self.added.append(request_id)
        self.configs[request_id] = config
        return FakeHandle()

    def step(self):
        pass

    def get_metrics(self):
        class Metrics:
            requests = scheduled_requests = 1
            cache_usage = 0.0

        return Metrics()


def test_a_refused_request_ends_alone_and_the_core_goes_on():
    core = EngineCore(FakePipeline(), eos_token_ids=[2])
    assert core.apply(("add", 1, [1, 2, 3], SAMPLING))
    assert core.apply(("add", 2, [1, 2, 3], {**SAMPLING, "temperature": 1.0, "top_p": 0.5}))
    assert core.apply(("add", 3, [1, 2, 3], SAMPLING))
    updates = core.step()
    refused = [u for u in updates if u[4] is not None]
    assert refused == [(2, [], None, None, ("invalid", "RuntimeError: Check 'top_p > 0' failed"))]
    moved = sorted((u[0], u[1]) for u in updates if u[4] is None)
    assert moved == [(1, [7, 8]), (3, [7, 8])]
    assert set(core.handles) == {1, 3}
    assert core.take_refused() == []  # sent once


def test_log_probabilities_go_with_the_tokens_of_the_requests_that_asked():
    pipe = FakePipeline()
    core = EngineCore(pipe, eos_token_ids=[2])
    assert core.apply(("add", 1, [1, 2, 3], {**SAMPLING, "logprobs": 0}))
    assert core.apply(("add", 2, [1, 2, 3], SAMPLING))
    updates = {u[0]: u for u in core.step()}
    assert updates[1][1:3] == ([7, 8], [-0.5, -1.25])
    assert updates[2][1:3] == ([7, 8], None)
    assert pipe.configs[1].logprobs == 1 and pipe.configs[2].logprobs == 0
