"""A GPU placement's num_gpus: each model's estimated memory (weights at the GPU's dtype, the KV
cache or activations, the CUDA context) over the GPU memory the nodes report, so several models
share one GPU; an explicit num_gpus stands; a model no GPU can hold fails the deploy saying why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contract.config import ModelAppArgs
from hardware.placement import CONTEXT_BYTES, GIB, MemoryNeed, PlacementError, place
from hardware.report import PLATFORMS, CpuReport, Device, NodeReport, Platform

CPU = CpuReport(vendor="GenuineIntel", model="Xeon", logical_cores=16)
AUTO = ModelAppArgs(source="x", task="embedding").hardware_preference
ROOT = Path(__file__).resolve().parents[2]


def gpu_node(*gib: float, name: str = "gpu-node") -> NodeReport:
    """A node with CUDA GPUs of these sizes (and OpenVINO, so `auto` could fall back)."""
    gpus = [Device(index=i, name=f"GPU {size:g} GB", total_memory_bytes=int(size * GIB)) for i, size in enumerate(gib)]
    platforms = {p: Platform(available=False, reason=f"no {p}") for p in PLATFORMS}
    platforms |= {"cuda": Platform(available=True, devices=gpus), "openvino": Platform(available=True),
                  "cpu": Platform(available=True)}
    return NodeReport(hostname=name, cpu=CPU, platforms=platforms, detected_at=0.0)


def chat(billions: float, kv_gb: float = 1.0) -> MemoryNeed:
    return MemoryNeed(parameters=int(billions * 1e9), kv_cache_bytes=int(kv_gb * GIB))


def encoder(millions: float) -> MemoryNeed:
    return MemoryNeed(parameters=int(millions * 1e6))


def share(memory: MemoryNeed | None, reports: list[NodeReport], **kw) -> float:
    return place("m", AUTO, "auto", reports, num_cpus=0.5, memory=memory, **kw).ray_actor_options["num_gpus"]


def packs(shares: list[float], gpus: int) -> bool:
    """Whether the replicas fit `gpus` GPUs as Ray packs fractions (each on one GPU), first fit."""
    free = [1.0] * gpus
    for amount in sorted(shares, reverse=True):
        slot = next((i for i, left in enumerate(free) if left + 1e-9 >= amount), None)
        if slot is None:
            return False
        free[slot] -= amount
    return True


def test_the_default_config_shares_one_gpu():
    """serve_config.yaml, unchanged: its chat and embedding models both fit one 16 GB GPU."""
    from serve_app.state.lifecycle.memory import gpu_memory_need

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    models = [app["args"] for app in config["applications"] if app["import_path"].endswith("build_model_app")]
    assert len(models) == 2
    node = gpu_node(16)
    placed = []
    for args in models:
        args = ModelAppArgs.model_validate(args)
        placement = place(args.source, args.hardware_preference, args.backend, [node],
                          num_cpus=args.num_cpus, num_gpus=args.num_gpus, memory=gpu_memory_need(args))
        assert placement.platform == "cuda" and "GiB" in placement.sizing
        placed.append(placement.ray_actor_options["num_gpus"])
    # SmolLM2-135M: 0.25 GiB of fp16 weights + its 1 GiB KV cache + the context, over 16 GiB.
    assert placed == [0.15, 0.1] and packs(placed, gpus=1)


def test_one_gpu_two_models_pack_onto_it():
    node = [gpu_node(80)]
    shares = [share(chat(7), node), share(encoder(335), node)]
    # 7B in float16 is 13 GiB; with 1 GiB of KV cache and the context, 15 GiB of 80 -> 0.2.
    assert shares == [0.2, 0.05]
    assert packs(shares, gpus=1)


def test_two_gpus_three_models_each_get_a_share_of_one_and_fit_both():
    node = [gpu_node(24, 24)]
    shares = [share(chat(7), node), share(chat(3), node), share(encoder(335), node)]
    assert shares == [0.65, 0.35, 0.1]  # 15.0, 7.6, 1.9 GiB of 24
    assert all(0 < amount < 1 for amount in shares)
    assert not packs(shares, gpus=1) and packs(shares, gpus=2)


def test_shares_are_sized_by_the_smallest_gpu_ray_may_pick():
    cluster = [gpu_node(80, name="big"), gpu_node(24, name="small")]
    assert share(chat(3), cluster) == 0.35  # 7.6 GiB of the 24 GiB GPU, not of the 80
    # Bigger than the small GPU, within the big one: a whole GPU, and the log says where it fits.
    placement = place("m", AUTO, "auto", cluster, num_cpus=0.5, memory=chat(13))
    assert placement.ray_actor_options["num_gpus"] == 1.0
    assert "more than the smallest cuda GPU" in placement.sizing


def test_a_model_no_gpu_can_hold_fails_the_deploy_with_both_figures():
    with pytest.raises(PlacementError) as failed:
        place("llama-70b", AUTO, "auto", [gpu_node(80), gpu_node(40, name="n2")], num_cpus=1, memory=chat(70))
    message = str(failed.value)
    # 70e9 x 2 bytes = 130.39 GiB of weights, + 1 GiB KV + 1 GiB context
    assert "model 'llama-70b'" in message and "132.39 GiB" in message and "80.00 GiB" in message
    assert "GPU 80 GB on gpu-node" in message and "num_gpus" in message


def test_an_explicit_num_gpus_stands():
    node = [gpu_node(80)]
    assert share(encoder(22), node, num_gpus=0.5) == 0.5
    assert share(chat(70), node, num_gpus=1) == 1  # the estimate may be wrong: the user's figure wins


def test_an_unsized_model_or_gpu_reserves_a_whole_gpu():
    assert share(None, [gpu_node(80)]) == 1.0  # a hub model that could not be counted
    node = gpu_node(80)
    unreported = node.model_copy(update={"platforms": node.platforms | {"cuda": Platform(
        available=True, devices=[Device(index=0, name="GPU")])}})  # no memory figure
    assert share(chat(1), [unreported]) == 1.0


def test_a_placement_off_the_gpu_reserves_none():
    placement = place("m", ("openvino", "cuda"), "auto", [gpu_node(80)], num_cpus=0.5, memory=chat(1))
    assert placement.platform == "openvino" and "num_gpus" not in placement.ray_actor_options


def test_the_need_counts_weights_at_the_gpu_dtype_the_kv_cache_or_activations_and_the_context():
    assert chat(1).parts("float16") == {"weights in float16": 2_000_000_000, "KV cache": GIB,
                                        "CUDA context": CONTEXT_BYTES}
    assert encoder(22).parts("float16")["activations"] == GIB // 4  # the floor
    assert encoder(2000).parts("float32")["activations"] == 2_000_000_000  # a quarter of 8 GB


def test_the_estimate_reads_the_weights_and_the_kv_cache_from_the_args(tmp_path):
    from serve_app.state.lifecycle.memory import gpu_memory_need, local_parameters
    from tests.tiny_models import build_tiny_bert

    bert = build_tiny_bert(tmp_path / "bert")
    count = local_parameters(ModelAppArgs(source=str(bert), task="embedding"))
    assert count and gpu_memory_need(ModelAppArgs(source=str(bert), task="embedding")) == MemoryNeed(count)
    generation = gpu_memory_need(ModelAppArgs(source=str(bert), task="text-generation", kv_cache_gb=2))
    assert generation == MemoryNeed(count, kv_cache_bytes=2 * GIB)
    # Not countable here (no hub in unit tests, a missing path): unsized, so a whole GPU.
    assert gpu_memory_need(ModelAppArgs(source=str(tmp_path / "gone"), task="embedding")) is None


def test_a_hub_model_is_counted_from_its_safetensors_headers(monkeypatch):
    import huggingface_hub

    from serve_app.state.lifecycle.memory import gpu_memory_need

    asked = []

    def metadata(repo_id, revision=None, **_):
        asked.append((repo_id, revision))
        return type("Metadata", (), {"parameter_count": {"BF16": 7_000_000_000, "F32": 1000}})()

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", metadata)
    need = gpu_memory_need(ModelAppArgs(source="org/chat-7b", task="text-generation", revision="v1"))
    assert need == MemoryNeed(7_000_001_000, kv_cache_bytes=GIB) and asked == [("org/chat-7b", "v1")]
    assert share(need, [gpu_node(80)]) == 0.2
