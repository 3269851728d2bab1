"""A model's `ray_actor_options` in serve_config.yaml: Ray applies them after the builder, in
place of placement's options, so the builder checks them (the deploy fails naming the model and
the field) and `hfserve serve` turns the ones that are also args into args (placement merges)."""

from __future__ import annotations

import pytest
import yaml

from contract.config import EnvOverrides
from hardware.placement import PlacementError, check_actor_options, merge_actor_options
from serve_app.cli.deploy_plan import plan_deploy
from serve_app.config_overrides import model_actor_options
from tests.conftest import ROOT

HEAD = {"CPU": 1.0, "head_node": 1.0}
WORKER = {"CPU": 1.0, "worker_node": 1.0}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0}
PLACED = {"num_cpus": 0.1, "resources": {"head_node": 0.01}}


def _refusal(**kw) -> str:
    with pytest.raises(PlacementError) as error:
        check_actor_options("embed", kw.pop("platform", "cpu"), kw.pop("placed", PLACED), kw.pop("given"),
                            kw.pop("nodes", [HEAD, WORKER]))
    return str(error.value)


def test_the_config_wins_field_by_field_and_resources_as_a_whole():
    merged = merge_actor_options({"num_cpus": 0.5, "num_gpus": 0.25, "resources": {"big": 1}},
                                 {"num_gpus": 1, "resources": {"worker_node": 0.1}, "memory": 2**30})
    assert merged == {"num_cpus": 0.5, "num_gpus": 1, "resources": {"worker_node": 0.1}, "memory": 2**30}


def test_a_pin_that_spells_out_what_it_changes_is_accepted():
    given = {"num_cpus": 0.1, "resources": {"worker_node": 0.1}}
    assert check_actor_options("embed", "cpu", PLACED, given, [HEAD, WORKER]) == given


def test_leaving_out_an_option_placement_sets_names_the_model_and_the_field():
    """The silent case: Serve reserves one CPU for a replica whose options leave num_cpus out,
    which a one-CPU node already running another model never has free."""
    message = _refusal(given={"resources": {"worker_node": 0.1}})
    assert "model 'embed'" in message and "leaves out num_cpus" in message
    assert "1 CPU per replica, not the model's 0.1" in message and "num_cpus: 0.1" in message


def test_an_option_equal_to_serves_default_may_be_left_out():
    placed = {"num_cpus": 1.0}
    assert check_actor_options("m", "cpu", placed, {"memory": 2**30}, [HEAD]) == {"num_cpus": 1.0, "memory": 2**30}


def test_dropping_the_models_own_pin_is_refused():
    message = _refusal(given={"num_cpus": 0.1})
    assert "leaves out resources" in message and "head_node" in message


def test_a_gpu_model_keeps_its_gpu_share():
    placed = {"num_cpus": 0.5, "num_gpus": 0.25}
    assert "leaves out num_gpus" in _refusal(platform="cuda", placed=placed, given={"num_cpus": 0.5}, nodes=[GPU_NODE])
    assert "num_gpus is 0" in _refusal(platform="cuda", placed=placed, given={"num_cpus": 0.5, "num_gpus": 0},
                                       nodes=[GPU_NODE])
    given = {"num_cpus": 0.5, "num_gpus": 0.5}  # an explicit share wins over the sized one
    assert check_actor_options("m", "cuda", placed, given, [GPU_NODE]) == given


def test_a_gpu_for_a_model_placed_on_a_cpu_platform_is_refused():
    message = _refusal(platform="openvino", placed={"num_cpus": 0.1}, given={"num_cpus": 0.1, "num_gpus": 1},
                       nodes=[GPU_NODE])
    assert "num_gpus reserves 1 GPU" in message and "openvino" in message


def test_what_no_node_has_is_refused_naming_it():
    assert "no node has all it asks for" in _refusal(given={"num_cpus": 0.1, "resources": {"gpu_box": 1}})
    message = _refusal(placed={"num_cpus": 0.1}, given={"num_cpus": 4})
    assert "num_cpus 4" in message
    # Each node has one of the two resources, none both.
    assert "resources" in _refusal(placed={"num_cpus": 0.1},
                                   given={"num_cpus": 0.1, "resources": {"head_node": 0.1, "worker_node": 0.1}})


def test_the_deployed_configs_model_options_are_found():
    app = {"name": "embed", "deployments": [{"name": "Other", "ray_actor_options": {"num_cpus": 2}},
                                            {"name": "ModelServer", "ray_actor_options": {"num_cpus": 0.2}}]}
    assert model_actor_options(app) == {"num_cpus": 0.2}
    assert model_actor_options({"name": "embed", "deployments": [{"name": "ModelServer", "num_replicas": 2}]}) is None
    assert model_actor_options({"deployments": [{"name": "ModelServer", "ray_actor_options": {}}]}) == {}
    assert model_actor_options(None) is None


def _plan(tmp_path, options: dict, args: dict | None = None):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = next(a for a in config["applications"] if a["name"] == "all-minilm-l6-v2")
    app["args"].update(args or {})
    app.setdefault("deployments", [{"name": "ModelServer"}])[0]["ray_actor_options"] = options
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = plan_deploy(path, EnvOverrides())
    deployed = next(a for a in plan.config["applications"] if a["name"] == "all-minilm-l6-v2")
    return plan, deployed


def test_hfserve_serve_turns_placement_options_into_args(tmp_path):
    plan, deployed = _plan(tmp_path, {"resources": {"worker_node": 0.1}, "num_cpus": 0.2}, {"num_cpus": 0.1})
    model = plan.models["all-minilm-l6-v2"]
    assert model.resources == {"worker_node": 0.1} and model.num_cpus == 0.2  # the YAML's win
    assert all("ray_actor_options" not in d for d in deployed.get("deployments") or [])
    assert any("merged into the model's args" in w for w in plan.warnings)


def test_hfserve_serve_leaves_other_options_to_ray_and_warns(tmp_path):
    plan, deployed = _plan(tmp_path, {"num_cpus": 0.2, "memory": 2**30})
    assert deployed["deployments"][0]["ray_actor_options"] == {"num_cpus": 0.2, "memory": 2**30}
    assert plan.models["all-minilm-l6-v2"].num_cpus != 0.2
    assert any("the deploy fails unless it spells out" in w for w in plan.warnings)
