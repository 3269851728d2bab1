"""Resolve a model source to local files, converting and caching where needed.

Sources: a local HF directory (used in place), an HF hub id (``org/name`` or ``hub:org/name``,
fetched as ``from_pretrained`` would), or ``package:<package>/<file>``, a file shipped inside an
installed package (found without importing it; GGUF files are converted to an HF directory).
A model whose files name custom code (``auto_map``) is refused: its code is never run.

OpenVINO IR is exported by optimum-intel. Each conversion is cached under
``<cache_dir>/<name>-<key>``, the key hashing the source's identity, the options and the
converter versions; a file lock keeps two replicas from converting one model at once, and
results are renamed into place (docs/architecture.md, "Model preparation and the cache").
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger("ray.serve")

Progress = Callable[[str], None]
CONVERTER_REVISION = "1"  # bump when the conversion code changes its output


class SourceError(ValueError):
    """The source cannot be resolved; the message says why."""


class SourceNotFoundError(SourceError):
    """A well-formed source that is not on this node (a local path, or a hub model this node
    cannot reach): another node may have it."""


MAX_SHOWN = 120  # of a source echoed in a message: a client may send 4096 characters


def shown(source: str) -> str:
    return repr(source if len(source) <= MAX_SHOWN else source[:MAX_SHOWN] + "...")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "local" | "hub" | "package"
    location: str  # directory or file path, or hub id
    revision: str | None = None
    package: str | None = None  # the import name, for a package source

    @property
    def is_gguf(self) -> bool:
        return self.location.lower().endswith(".gguf")


def parse_source(source: str, revision: str | None = None) -> ModelSource:
    source = source.strip()
    if any(ord(char) < 32 or ord(char) == 127 for char in source):  # a NUL byte, a newline: no file or hub id has one
        raise SourceError(f"model source {shown(source)} contains control characters")
    if source.startswith("package:"):
        return _package_source(source)
    if source.startswith("hub:"):
        return ModelSource("hub", source.removeprefix("hub:"), revision)
    path = Path(source).expanduser()
    if _exists(path, source):
        return ModelSource("local", str(_model_location(path.resolve(), source)))
    if source.startswith(("/", "./", "../", "~")):
        raise SourceNotFoundError(f"local model path {shown(source)} does not exist")
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source):
        return ModelSource("hub", source, revision)
    raise SourceError(f"cannot resolve model source {shown(source)}")


HUB_CHECK_TIMEOUT_S = 5.0


def check_hub_model(source: ModelSource, timeout_s: float = HUB_CHECK_TIMEOUT_S) -> None:
    """SourceNotFoundError unless the hub model is in this node's HF cache or the hub knows it (one
    metadata request, nothing downloaded). A hub that cannot be reached, or HF_HUB_OFFLINE, leaves
    only the cache: a load would fail the same way."""
    from huggingface_hub import HfApi, constants, errors, snapshot_download

    name = shown(source.location) + (f" at revision {shown(source.revision)}" if source.revision else "")
    try:
        snapshot_download(source.location, revision=source.revision, local_files_only=True)
        return
    except Exception:  # noqa: BLE001 - not in the cache (the error types vary across huggingface_hub versions)
        pass
    if constants.HF_HUB_OFFLINE:
        raise SourceNotFoundError(f"hub model {name} is not in this node's HF cache, and HF_HUB_OFFLINE is set")
    try:
        HfApi().model_info(source.location, revision=source.revision, timeout=timeout_s)
    except errors.HFValidationError as exc:
        raise SourceError(f"{shown(source.location)} is not a valid hub model id: {str(exc)[:200]}") from None
    except errors.RevisionNotFoundError:
        raise SourceNotFoundError(f"hub model {shown(source.location)} has no revision {shown(source.revision or '')}") from None
    except errors.RepositoryNotFoundError:
        raise SourceNotFoundError(f"hub model {shown(source.location)} does not exist, or is private to another "
                                  "account (HF_TOKEN)") from None
    except Exception as exc:  # noqa: BLE001 - offline, DNS, a timeout: the hub cannot be asked
        raise SourceNotFoundError(f"hub model {name} is not in this node's HF cache, and the hub cannot be reached "
                                  f"({type(exc).__name__}: {str(exc)[:200]})") from None


def _package_source(source: str) -> ModelSource:
    package, _, relative = source.removeprefix("package:").partition("/")
    if not package or not relative:
        raise SourceError(f"package source must look like package:<package>/<file>, got {shown(source)}")
    # find_spec of a dotted name imports its parents (`this.x` runs `this`), so only a
    # top-level name is looked up, and a top-level lookup never executes the package.
    if not package.isidentifier():
        raise SourceError(f"package {shown(package)} is not an installed top-level package (source {shown(source)}); "
                          "name a folder inside a package after the slash: package:<package>/<folder>/<file>")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise SourceError(f"package {shown(package)} is not installed (source {shown(source)})")
    path = Path(next(iter(found.submodule_search_locations))) / relative
    if not _exists(path, source):
        raise SourceError(f"{shown(relative)} does not exist inside package {shown(package)}")
    return ModelSource("package", str(_model_location(path, source)), package=package)


def _exists(path: Path, source: str) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # a name too long, a folder this process may not read
        raise SourceError(f"model path {shown(source)} cannot be read: {exc.strerror or type(exc).__name__}") from None


def _model_location(path: Path, source: str) -> Path:
    """A model directory or a GGUF file; anything else (a device, a FIFO, another file) is refused
    before anyone reads it: /dev/zero never ends."""
    if path.is_dir():
        return path
    if not path.is_file():
        raise SourceError(f"model path {shown(source)} is a device or special file, not a model directory or file")
    if path.suffix.lower() != ".gguf":
        raise SourceError(f"model path {shown(source)} is a file but not a GGUF file; point source at a model directory")
    return path


def refuse_custom_code(location: Path) -> None:
    """SourceError when the model's configs map it to its own Python code (`auto_map`): hfserve
    never runs it (trust_remote_code stays off), and transformers would otherwise prompt for it."""
    if not location.is_dir():
        return
    for config in sorted(location.glob("*config.json")):
        if not config.is_file():  # reading a FIFO would block
            raise SourceError(f"{config.name} is not a regular file")
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise SourceError(f"{config.name} is not readable JSON: {type(exc).__name__}") from None
        if isinstance(data, dict) and data.get("auto_map"):
            names = ", ".join(sorted(map(str, data["auto_map"])))[:200] if isinstance(data["auto_map"], dict) else "auto_map"
            raise SourceError(f"{config.name} maps the model to custom code ({names}), and hfserve never runs a model's "
                              "own code (trust_remote_code is off); serve a model whose architecture transformers ships")


def _identity(source: ModelSource) -> str:
    """What makes two sources the same for caching purposes."""
    if source.kind == "hub":
        return f"hub:{source.location}@{source.revision or 'main'}"
    if source.kind == "package":
        recorded = _package_identity(source)
        if recorded is not None:
            return recorded
    path = Path(source.location)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    parts = [f"{p.relative_to(path.parent)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return "\n".join([source.kind, str(path), *parts])


def _package_identity(source: ModelSource) -> str | None:
    """A wheel-installed package's files as its RECORD lists them: the distribution, its version
    and each file's sha256. Every venv that installed that wheel gives the same identity, wherever
    it sits and whenever it was installed; path and mtime did not, so each new venv (every fresh
    clone's `make test`) converted again and left another gigabyte in the cache. None for an
    install whose RECORD has no hashes (editable, built in place): paths and mtimes then."""
    path = Path(source.location).resolve()
    package_dir = path.parent if path.is_file() else path
    while package_dir.name != source.package and package_dir != package_dir.parent:
        package_dir = package_dir.parent
    # Only the distributions installed beside the package, the one named like it first: reading
    # every RECORD in a site-packages costs ~0.2 s.
    relative = path.relative_to(package_dir.parent).parts
    site = [str(package_dir.parent)]
    named = importlib.metadata.distributions(path=site, name=source.package)
    for dist in itertools.chain(named, importlib.metadata.distributions(path=site)):
        entries = []
        for file in dist.files or []:
            if file.parts[: len(relative)] == relative:
                if file.hash is None:
                    return None
                entries.append(f"{'/'.join(file.parts[len(relative) - 1:])}:{file.hash.mode}={file.hash.value}")
        if entries:
            return "\n".join(["package", f"{dist.metadata['Name']}=={dist.version}", *sorted(entries)])
    return None


def stable_revision(source_text: str, revision: str | None, *options: str) -> str:
    """The model's version as every replica on every node sees it: the source, its hub revision,
    the options that change outputs and the size of each file, but no mtimes, which differ
    between nodes that installed the same files at different times. The response cache keys
    entries by it, so replicas of one version share them and a new version misses."""
    source = parse_source(source_text, revision)
    # The source as configured, not where it resolved: venvs sit at different paths on different nodes.
    digest = hashlib.sha256("\0".join([source_text.strip(), source.revision or "", *options]).encode())
    if source.kind != "hub":
        path = Path(source.location)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digest.update(f"\0{file.relative_to(path.parent)}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _versions(*packages: str) -> str:
    out = []
    for name in packages:
        try:
            out.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name}=none")
    return ",".join(out)


def cache_key(source: ModelSource, *options: str) -> str:
    digest = hashlib.sha256()
    for part in (CONVERTER_REVISION, _identity(source), *options):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _safe_name(source: ModelSource) -> str:
    """A readable cache folder prefix: the file's stem, or the last two path parts."""
    path = Path(source.location)
    stem = path.stem if source.is_gguf else "-".join(path.parts[-2:])
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem)[:64]


def _cached(cache_dir: Path, name: str, build: Callable[[Path], None], progress: Progress, what: str) -> Path:
    """Return cache_dir/name, building it first (under a lock, atomically) if missing."""
    target = cache_dir / name
    if (target / ".complete").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{name}.lock"), timeout=3600):
        if (target / ".complete").exists():  # another process finished it while we waited
            return target
        progress(f"{what} (one-time; cached in {target})")
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
        try:
            build(tmp)
            (tmp / ".complete").write_text(json.dumps({"created": time.time()}))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        progress(f"{what}: done in {time.monotonic() - started:.1f}s")
    return target


@dataclass(frozen=True)
class PreparedModel:
    """Local files a replica loads from."""

    hf_dir: Path
    openvino_dir: Path | None = None


# What a task's weights load as (TaskSpec.hf_task, named as transformers' pipelines and
# optimum's exporters name them): the transformers class for GGUF conversion, and the
# optimum-intel class for the OpenVINO export.
MODEL_CLASSES = {
    "text-generation": ("AutoModelForCausalLM", "OVModelForCausalLM"),
    "feature-extraction": ("AutoModel", "OVModelForFeatureExtraction"),
    "text-classification": ("AutoModelForSequenceClassification", "OVModelForSequenceClassification"),
}


def resolve_hf_dir(source: ModelSource, hf_task: str, cache_dir: Path, progress: Progress) -> Path:
    if source.kind == "hub":
        from huggingface_hub import snapshot_download

        progress(f"fetching {source.location} from the HF hub")
        return Path(snapshot_download(source.location, revision=source.revision))
    path = Path(source.location)
    if path.is_dir():
        return path
    if source.is_gguf:
        key = cache_key(source, hf_task, _versions("transformers", "gguf", "tokenizers"))
        return _cached(
            cache_dir,
            f"{_safe_name(source)}-hf-{key}",
            lambda out: convert_gguf(path, hf_task, out),
            progress,
            f"converting {path.name} from GGUF to an HF checkpoint",
        )
    raise SourceError(f"{path} is a file but not a GGUF file; point source at a model directory")


def prepare_openvino_ir(
    hf_dir: Path, source: ModelSource, hf_task: str, weight_format: str, cache_dir: Path, progress: Progress
) -> Path:
    key = cache_key(
        source, hf_task, weight_format, _versions("optimum-intel", "openvino", "transformers")
    )
    return _cached(
        cache_dir,
        f"{_safe_name(source)}-ov-{key}",
        lambda out: export_openvino(hf_dir, hf_task, weight_format, out),
        progress,
        f"exporting {hf_dir.name} to OpenVINO IR ({weight_format})",
    )


def prepare_model(
    source_text: str,
    hf_task: str,
    *,
    revision: str | None,
    use_openvino: bool,
    weight_format: str,
    cache_dir: Path,
    progress: Progress | None = None,
) -> PreparedModel:
    """Everything a replica needs on local disk; converting once, then reusing the cache."""
    progress = progress or (lambda msg: logger.info(msg))
    source = parse_source(source_text, revision)
    if hf_task not in MODEL_CLASSES:
        raise SourceError(f"cannot load weights as {hf_task!r}; known: {', '.join(MODEL_CLASSES)}")
    hf_dir = resolve_hf_dir(source, hf_task, cache_dir, progress)
    refuse_custom_code(hf_dir)
    ov_dir = None
    if use_openvino:
        ov_dir = prepare_openvino_ir(hf_dir, source, hf_task, weight_format, cache_dir, progress)
    return PreparedModel(hf_dir=hf_dir, openvino_dir=ov_dir)


# ----------------------------------------------------------------------------- converters


def export_openvino(hf_dir: Path, hf_task: str, weight_format: str, out: Path) -> None:
    import optimum.intel
    from optimum.intel import OVWeightQuantizationConfig

    cls = getattr(optimum.intel, MODEL_CLASSES[hf_task][1])
    kwargs: dict = {"export": True, "compile": False, "trust_remote_code": False}
    if weight_format == "int8":
        kwargs["quantization_config"] = OVWeightQuantizationConfig(bits=8)
    else:
        kwargs["load_in_8bit"] = False
    model = cls.from_pretrained(str(hf_dir), **kwargs)
    if weight_format == "fp16":
        model.half()
    model.save_pretrained(str(out))


def convert_gguf(gguf_path: Path, hf_task: str, out: Path) -> None:
    """GGUF (quantised) -> HF safetensors checkpoint plus a tokenizer that loads correctly."""
    import transformers

    directory, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=filename, trust_remote_code=False)
    model_cls = getattr(transformers, MODEL_CLASSES[hf_task][0])
    model = model_cls.from_pretrained(directory, gguf_file=filename, trust_remote_code=False)
    if getattr(model, "hf_quantizer", None) is not None:  # transformers >= 5.16 marks it so, dequantized
        model.hf_quantizer = None
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    _repair_gguf_tokenizer(gguf_path, out, tokenizer)


def _gguf_field(reader, key: str):
    """A scalar or string value from a GGUF header, or None."""
    import gguf

    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode("utf-8")
    return value.tolist()[0]


def _repair_gguf_tokenizer(gguf_path: Path, out: Path, original) -> None:
    """Rewrite the tokenizer config transformers derives from GGUF metadata.

    transformers 5.x labels a GGUF byte-level BPE tokenizer with a Llama/CodeLlama tokenizer
    class; reloading it through that class rebuilds the normaliser and pre-tokeniser and
    mangles text (spaces become token 0), and it adds a BOS the GGUF says not to add. The
    tokenizer.json itself is right, so we load it as a plain fast tokenizer with the special
    tokens and chat template read from the GGUF header, then check that it encodes exactly as
    the in-memory tokenizer did.
    """
    import gguf
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(str(gguf_path))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(tokens.parts[i]).decode("utf-8", errors="replace") for i in tokens.data]

    def token(key: str) -> str | None:
        index = _gguf_field(reader, key)
        return vocab[int(index)] if index is not None and 0 <= int(index) < len(vocab) else None

    tokenizer_json = json.loads((out / "tokenizer.json").read_text())
    if not _gguf_field(reader, "tokenizer.ggml.add_bos_token"):
        tokenizer_json["post_processor"] = None
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id") or token("tokenizer.ggml.eos_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_gguf_field(reader, f"{_gguf_field(reader, 'general.architecture')}.context_length") or 2048),
    }
    template = _gguf_field(reader, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    (out / "chat_template.jinja").unlink(missing_ok=True)
    (out / "special_tokens_map.json").unlink(missing_ok=True)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    repaired = AutoTokenizer.from_pretrained(str(out))
    probe = "Hello world! The capital of France is Paris.\n  Indented code: x = 1"
    expected = original(probe, add_special_tokens=False)["input_ids"]
    got = repaired(probe, add_special_tokens=False)["input_ids"]
    if expected != got or repaired.decode(got) != probe:
        raise SourceError(f"tokenizer converted from {gguf_path.name} does not round-trip text")
