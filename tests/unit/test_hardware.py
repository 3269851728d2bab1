"""Backend selection on a node and placement on a cluster: pure functions of node reports and
a model's hardware preference."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.config import ModelAppArgs
from hardware.placement import PlacementError, place, unknown_resources
from hardware.report import PLATFORMS, CpuReport, Device, NodeReport, Platform
from hardware.select import BackendUnavailableError, NotSupportedYetError, select_backend

CPU = CpuReport(vendor="GenuineIntel", model="Xeon", logical_cores=8, avx512=True, flags=["avx512f"])
AUTO = ModelAppArgs(source="x", task="embedding").hardware_preference


def node(*present: str, name: str = "n1", node_id: str | None = None) -> NodeReport:
    platforms = {
        p: Platform(available=True, devices=[Device(index=0, name=f"{p} device")]) if p in present or p == "cpu"
        else Platform(available=False, reason=f"no {p} here")
        for p in PLATFORMS
    }
    return NodeReport(hostname=name, node_id=node_id, cpu=CPU, platforms=platforms, detected_at=0.0)


# ----------------------------------------------------------------------------- select (one node)


def test_auto_on_a_cpu_node_with_openvino_runs_openvino():
    choice = select_backend("m", AUTO, "auto", node("openvino"))
    assert (choice.platform, choice.backend, choice.device) == ("openvino", "openvino", "cpu")
    assert "cuda: no cuda here" in choice.reason  # why the faster ones were passed over


def test_auto_on_a_gpu_node_runs_transformers_on_cuda_when_the_replica_has_a_gpu():
    choice = select_backend("m", AUTO, "auto", node("cuda", "openvino"), gpus_assigned=1)
    assert (choice.platform, choice.backend, choice.device, choice.dtype) == ("cuda", "transformers", "cuda", "float16")


def test_a_replica_without_a_gpu_does_not_pick_cuda_it_cannot_see():
    choice = select_backend("m", AUTO, "auto", node("cuda", "openvino"), gpus_assigned=0)
    assert choice.platform == "openvino"
    assert "reserved no GPU" in choice.reason


def test_rocm_runs_torch_on_its_cuda_device_and_mps_on_mps():
    assert select_backend("m", ("rocm",), "auto", node("rocm"), gpus_assigned=1).device == "cuda"
    assert select_backend("m", AUTO, "auto", node("mps")).device == "mps"


def test_auto_without_openvino_runs_torch_on_the_cpu():
    choice = select_backend("m", AUTO, "auto", node())
    assert (choice.platform, choice.backend, choice.device) == ("cpu", "transformers", "cpu")


def test_the_backend_narrows_the_platforms():
    assert select_backend("m", AUTO, "transformers", node("openvino")).platform == "cpu"
    assert select_backend("m", AUTO, "openvino", node("openvino")).platform == "openvino"
    with pytest.raises(BackendUnavailableError, match="none of hardware openvino"):
        select_backend("m", AUTO, "openvino", node())


def test_a_single_platform_is_strict():
    with pytest.raises(BackendUnavailableError, match="model 'm'.*cuda.*no cuda here"):
        select_backend("m", ("cuda",), "auto", node("openvino"))
    with pytest.raises(BackendUnavailableError, match="reserved no GPU"):
        select_backend("m", ("cuda",), "auto", node("cuda"), gpus_assigned=0)


def test_a_detected_platform_without_an_engine_is_not_supported_yet_never_a_cpu_fallback():
    with pytest.raises(NotSupportedYetError, match="'qnn' is detected, but hfserve has no qnn engine yet"):
        select_backend("m", ("qnn",), "auto", node("qnn"))
    # In a preference list it is passed over, and the reason says so.
    choice = select_backend("m", ("qnn", "cpu"), "auto", node("qnn"))
    assert choice.platform == "cpu" and "qnn: detected, no engine yet" in choice.reason


# ----------------------------------------------------------------------------- place (cluster)


def test_a_gpu_model_gets_a_gpu_and_lands_on_gpu_nodes():
    cluster = [node("openvino", name="cpu-node"), node("cuda", "openvino", name="gpu-node")]
    placed = place("chat", AUTO, "auto", cluster, num_cpus=0.5)
    assert placed.platform == "cuda" and placed.nodes == ("gpu-node",)
    assert placed.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 1.0}


def test_a_fraction_of_a_gpu_and_custom_resources_pass_through():
    placed = place("m", ("cuda",), "auto", [node("cuda")], num_cpus=1, num_gpus=0.25, resources={"big": 1})
    assert placed.ray_actor_options == {"num_cpus": 1, "num_gpus": 0.25, "resources": {"big": 1}}


def test_a_cpu_cluster_places_on_openvino_without_gpus():
    placed = place("m", AUTO, "auto", [node("openvino"), node("openvino", name="n2")], num_cpus=0.5)
    assert placed.platform == "openvino" and placed.ray_actor_options == {"num_cpus": 0.5}
    # num_gpus is for a GPU placement: landing on a CPU platform reserves none (else unschedulable).
    assert place("m", AUTO, "auto", [node("openvino")], num_cpus=0.5, num_gpus=0.5).ray_actor_options == {"num_cpus": 0.5}


def test_hardware_that_no_node_has_is_a_deploy_error_naming_model_and_hardware():
    with pytest.raises(PlacementError, match=r"model 'chat': no node has hardware cuda \(the cluster's 2 node"):
        place("chat", ("cuda",), "auto", [node("openvino"), node()], num_cpus=0.5)
    with pytest.raises(PlacementError, match="no node has hardware cuda or rocm"):
        place("chat", ("cuda", "rocm"), "auto", [node()], num_cpus=0.5)


def test_a_platform_without_an_engine_is_not_supported_yet_at_deploy():
    with pytest.raises(NotSupportedYetError, match="'qnn' is detected"):
        place("m", ("qnn",), "auto", [node("qnn")], num_cpus=0.5)
    with pytest.raises(NotSupportedYetError, match="'qnn' was asked for"):
        place("m", ("qnn",), "auto", [node()], num_cpus=0.5)


def test_a_gpu_platform_with_zero_gpus_is_refused():
    with pytest.raises(PlacementError, match="needs num_gpus > 0"):
        place("m", ("cuda",), "auto", [node("cuda")], num_cpus=0.5, num_gpus=0)


def test_no_reports_means_no_placement_rather_than_a_guess():
    with pytest.raises(PlacementError, match="no node reported"):
        place("m", AUTO, "auto", [], num_cpus=0.5)


def test_resources_no_node_has_are_found():
    nodes = [{"CPU": 2.0, "head_node": 1.0}, {"CPU": 2.0, "worker_node": 1.0}]
    assert unknown_resources({"worker_node": 0.01}, nodes) == {}
    assert unknown_resources({"gpu_node": 1}, nodes) == {"gpu_node": 1}
    assert unknown_resources({"head_node": 1, "worker_node": 1}, nodes) == {"head_node": 1, "worker_node": 1}
    assert unknown_resources({}, nodes) == {}


# ----------------------------------------------------------------------------- the config field


def test_hardware_accepts_one_name_or_a_preference_list():
    assert ModelAppArgs(source="x", task="embedding", hardware="cuda").hardware_preference == ("cuda",)
    args = ModelAppArgs(source="x", task="embedding", hardware=["cuda", "openvino"])
    assert args.hardware_preference == ("cuda", "openvino")
    assert AUTO == ("cuda", "rocm", "mps", "openvino", "qnn", "cpu")


@pytest.mark.parametrize(("bad", "says"), [
    ("tpu", "unknown hardware 'tpu'; choose auto or from: cuda, rocm, mps, openvino, qnn, cpu"),
    (["cuda", "gpu"], "unknown hardware 'gpu'"),
    ("CUDA", "unknown hardware 'CUDA'"),
    ([], "(empty list)"),
    (["auto", "cpu"], "cannot be combined"),
    (["cpu", "cpu"], "twice"),
])
def test_bad_hardware_fails_validation_saying_why(bad, says):
    with pytest.raises(ValidationError) as info:
        ModelAppArgs(source="x", task="embedding", hardware=bad)
    assert says in str(info.value)


def test_hfserve_hardware_renders_each_platform_and_the_auto_choice():
    from serve_app.cli.hardware import render

    text = render([node("openvino", name="cpu-box", node_id="abcdef0123456789")], "the Ray cluster at x")
    assert "1 node(s) in the Ray cluster at x" in text and "node abcdef012345" in text
    assert "cuda      no: no cuda here" in text and "openvino  yes" in text
    assert "auto ->   openvino (openvino on cpu)" in text
    assert "AVX-512" in text  # the CPU's inference extensions
