"""`backend: vllm` without vLLM: where the selection puts it, which args are refused, and how
vLLM's log-probabilities become the engine contract's (the engine itself runs in `make test-vllm`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from contract.config import ModelAppArgs
from contract.engine import TokenLogprob
from deployments.engines.vllm_generation import VLLMUnavailableError, _logprobs, import_vllm
from hardware.detect import detect, vllm_version
from hardware.select import BackendUnavailableError, select_backend
from tests.unit.test_hardware import AUTO, node


def with_vllm(report, version: str | None = "0.32.0"):
    return report.model_copy(update={"vllm": version})


def test_auto_on_a_gpu_node_with_vllm_runs_text_generation_on_vllm():
    choice = select_backend("m", AUTO, "auto", with_vllm(node("cuda")), gpus_assigned=1, auto_vllm=True)
    assert (choice.platform, choice.backend, choice.device, choice.dtype) == ("cuda", "vllm", "cuda", "auto")
    assert "vLLM 0.32.0" in choice.reason
    rocm = select_backend("m", ("rocm",), "auto", with_vllm(node("rocm")), gpus_assigned=1, auto_vllm=True)
    assert (rocm.backend, rocm.device) == ("vllm", "cuda")


def test_auto_without_vllm_or_off_the_gpu_is_what_it_was():
    # No vLLM on the node: transformers on cuda, as before vLLM existed here.
    choice = select_backend("m", AUTO, "auto", node("cuda"), gpus_assigned=1, auto_vllm=True)
    assert (choice.backend, choice.dtype) == ("transformers", "float16")
    # vLLM on a CPU node does not displace OpenVINO, nor transformers on the CPU, under auto.
    assert select_backend("m", AUTO, "auto", with_vllm(node("openvino")), auto_vllm=True).backend == "openvino"
    assert select_backend("m", AUTO, "auto", with_vllm(node()), auto_vllm=True).backend == "transformers"


def test_auto_keeps_the_encoders_on_transformers():
    choice = select_backend("m", AUTO, "auto", with_vllm(node("cuda")), gpus_assigned=1, auto_vllm=False)
    assert choice.backend == "transformers"


def test_backend_vllm_by_name_runs_on_the_cpu_or_a_gpu_never_openvino():
    cpu = select_backend("m", AUTO, "vllm", node("openvino"), auto_vllm=True)
    assert (cpu.platform, cpu.backend, cpu.device) == ("cpu", "vllm", "cpu")
    gpu = select_backend("m", AUTO, "vllm", node("cuda"), gpus_assigned=1, auto_vllm=True)
    assert (gpu.platform, gpu.backend) == ("cuda", "vllm")
    with pytest.raises(BackendUnavailableError, match="backend 'vllm' cannot run on hardware openvino"):
        select_backend("m", ("openvino",), "vllm", node("openvino"), auto_vllm=True)


def test_a_task_without_a_vllm_engine_refuses_backend_vllm():
    for task in ("rerank", "text-classification"):
        with pytest.raises(ValidationError, match=f"backend 'vllm': {task} models run on openvino, transformers"):
            ModelAppArgs(source="x", task=task, backend="vllm")
    for task in ("text-generation", "embedding"):
        assert ModelAppArgs(source="x", task=task, backend="vllm").backend == "vllm"


def test_vllm_has_no_max_pooling_and_says_so():
    from deployments.engines.encoders import PoolingSpec
    from deployments.engines.vllm_encoder import VLLMEncoder

    with pytest.raises(ValueError, match="pools with 'max', which vLLM does not have"):
        VLLMEncoder(Path("unused"), PoolingSpec(mode="max"), device="cpu", dtype="auto", max_model_len=128)


def test_vllm_refuses_num_threads_rather_than_ignoring_it():
    with pytest.raises(ValidationError, match="num_threads: vLLM places its own CPU threads"):
        ModelAppArgs(source="x", task="text-generation", backend="vllm", num_threads=2)


def test_the_node_report_says_whether_vllm_is_there():
    assert detect().vllm == vllm_version()  # this environment: none, unless someone installed it
    if vllm_version() is None:
        with pytest.raises(VLLMUnavailableError, match="runtime_env"):
            import_vllm()


def _lp(logprob: float, rank: int) -> SimpleNamespace:
    return SimpleNamespace(logprob=logprob, rank=rank)


def test_vllm_logprobs_become_the_sampled_tokens_and_the_likeliest_in_rank_order():
    # Token 7 was sampled at rank 3; vLLM adds it to the top 2 it was asked for.
    given = [{5: _lp(-0.1, 1), 9: _lp(-2.0, 2), 7: _lp(-3.0, 3)}, {4: _lp(-0.5, 1)}]
    assert _logprobs([7, 4], given, 2) == [TokenLogprob(-3.0, ((5, -0.1), (9, -2.0))), TokenLogprob(-0.5, ((4, -0.5),))]
    assert _logprobs([4], [{4: _lp(-0.5, 1)}], 0) == [TokenLogprob(-0.5, ())]
    assert _logprobs([4], None, None) is None


def test_hfserve_hardware_says_whether_each_node_has_vllm():
    from serve_app.cli.hardware import render

    text = render([with_vllm(node("cuda", name="gpu-box")), node(name="cpu-box")], "x")
    assert "vllm      yes 0.32.0" in text and "vllm      no: not in this environment" in text
