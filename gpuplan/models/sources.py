"""Where a model's config comes from, tried in a fixed order.

1. **local**: an existing directory holding config.json (or Meta's params.json), or a path to such a file;
   a ``.gguf`` file, or a directory holding one and no config; the safetensors headers beside a config
   give the exact stored bytes;
2. **modelscope**: ``modelscope:owner/name[@rev]`` (or ``source="modelscope"``) reads config.json from
   ModelScope (MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN, MODELSCOPE_CACHE);
3. **catalog**: the bundled catalog (data/models/), by exact Hub id or short alias: offline and instant;
4. **hub**: the Hugging Face Hub (or the mirror in HF_ENDPOINT) through huggingface_hub, for ids the
   catalog does not hold, or for any id when ``source="hub"`` or a revision is asked for.

When the Hub or ModelScope cannot be reached and the catalog holds the id, the bundled copy is used with
a notice. ``offline`` (``--offline``; None follows HF_HUB_OFFLINE, read by gpuplan.models.http.offline_mode
in the client that would go online) never touches the network: the Hub cache and the ModelScope cache still
answer.
"""


import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gpuplan.errors import ConfigError, HubUnavailableError, InputError, ModelNotFoundError
from gpuplan.models.catalog import load_catalog
from gpuplan.models.families import config_to_spec, meta_params_to_spec
from gpuplan.models.spec import ModelSpec

SourceName = Literal["auto", "local", "catalog", "hub", "modelscope"]
SOURCES: tuple[str, ...] = ("auto", "local", "catalog", "hub", "modelscope")
MODELSCOPE_PREFIX = "modelscope:"

# Configs are small: Llama-3.1-405B's config.json is under 1 KiB and the largest seen (multimodal with
# vision configs) are tens of KiB. Refusing files above 16 MiB keeps a wrong path (a weights file)
# from being read whole.
MAX_CONFIG_BYTES = 16 * 1024 * 1024


class ResolvedModel(BaseModel):
    """A model located and parsed: the spec plus where it came from."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: Literal["local", "catalog", "hub", "hub-cache", "modelscope", "modelscope-cache"]
    spec: ModelSpec
    revision: str | None = None
    commit: str | None = None
    location: str | None = None
    published_parameters: int | None = None
    safetensors_parameters: dict[str, int] | None = None
    notices: tuple[str, ...] = ()
    gguf: Any = Field(default=None, exclude=True, repr=False)
    """The GgufModel (gpuplan.models.gguf) when the model is a GGUF file: what --engine llama.cpp reads.
    Typed loosely so that the GGUF reader is imported only for GGUF files."""


def read_json_file(path: Path) -> Any:
    """Read a JSON config file with errors a user can act on (missing, binary, truncated, malformed)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelNotFoundError(f"no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {size:,} bytes: too large for a config.json",
                          hint="point gpuplan at the model folder or its config.json, not a weights file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if not data.strip():
        raise ConfigError(f"{path} is empty", hint="download the model's config.json again")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (binary data)",
                          hint="point gpuplan at the model's config.json") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        truncated = exc.pos >= len(text.rstrip()) - 1
        what = "truncated" if truncated else "not valid JSON"
        raise ConfigError(f"{path} is {what} (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                          hint="download the model's config.json again") from None


def parse_config(raw: Any, *, label: str, tokenizer_vocab: int | None = None) -> ModelSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a JSON object at the top level, got {type(raw).__name__}")
    if "model_type" not in raw and "dim" in raw and "n_layers" in raw:
        return meta_params_to_spec(raw, label=label, tokenizer_vocab=tokenizer_vocab)
    return config_to_spec(raw, label=label)


def sentencepiece_vocab_size(path: Path) -> int | None:
    """Count the pieces of a SentencePiece tokenizer.model (a ModelProto: field 1 = repeated pieces),
    without the sentencepiece package. Returns None when the file cannot be read as one."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    pos, count = 0, 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    try:
        while pos < len(data):
            tag = varint()
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                varint()
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length = varint()  # read first: `pos += varint()` would add to the stale pos
                pos += length
            elif wire == 5:
                pos += 4
            else:
                return None
            if field == 1 and wire == 2:
                count += 1
    except ValueError:
        return None
    if pos != len(data):
        return None
    return count or None


def _load_local(path: Path) -> ResolvedModel:
    path = path.expanduser()
    if path.is_dir():
        for name in ("config.json", "params.json"):
            if (path / name).is_file():
                config_file = path / name
                break
        else:
            if any(p.is_file() for p in path.glob("*.gguf")):
                return _load_gguf(path)
            raise ModelNotFoundError(f"{path} holds neither config.json nor params.json",
                                     hint="point gpuplan at a Hugging Face model folder, its config.json or "
                                          "a .gguf file")
    elif path.suffix.lower() == ".gguf":
        return _load_gguf(path)
    else:
        config_file = path
    raw = read_json_file(config_file)
    tokenizer_vocab = None
    tokenizer = config_file.parent / "tokenizer.model"
    if config_file.name == "params.json" and tokenizer.is_file():
        tokenizer_vocab = sentencepiece_vocab_size(tokenizer)
    spec = parse_config(raw, label=str(config_file), tokenizer_vocab=tokenizer_vocab)
    stored, notices = _local_weights(config_file.parent)
    return ResolvedModel(id=str(path), source="local", spec=spec, location=str(config_file),
                         safetensors_parameters=stored, notices=notices)


# PyTorch pickle checkpoints: never opened, since unpickling runs arbitrary code
# (https://docs.python.org/3/library/pickle.html, "Warning: The pickle module is not secure").
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _local_weights(folder: Path) -> tuple[dict[str, int] | None, tuple[str, ...]]:
    """Elements per dtype of the safetensors checkpoint beside a config (headers only), with notices."""
    has_index = (folder / "model.safetensors.index.json").is_file()
    if has_index or any(p.is_file() for p in folder.glob("*.safetensors")):
        from gpuplan.models.safetensors_local import summarize_safetensors

        try:
            summary = summarize_safetensors(folder)
        except (ConfigError, ModelNotFoundError) as exc:
            return None, (f"the safetensors headers could not be read ({exc.message}): the weights are "
                          "counted from the config",)
        return dict(summary.elements_by_dtype), ()
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.is_file())
    if pickles:
        shown = ", ".join(pickles[:3]) + (" ..." if len(pickles) > 3 else "")
        return None, (f"{folder} holds PyTorch pickle weights ({shown}), which gpuplan never opens (loading "
                      "a pickle runs code): the weights are counted from the config",)
    return None, ()


def _load_gguf(path: Path) -> ResolvedModel:
    from gpuplan.models.gguf import load_gguf_model  # the GGUF reader is needed for GGUF files only

    model = load_gguf_model(path)
    return ResolvedModel(id=str(path), source="local", spec=model.spec, location=model.files[0].path, gguf=model)


def _load_catalog(name: str, *, notices: tuple[str, ...] = ()) -> ResolvedModel | None:
    entry = load_catalog().get(name)
    if entry is None:
        return None
    raw = read_json_file(entry.path)
    spec = parse_config(raw, label=f"{entry.id} (bundled {entry.file})", tokenizer_vocab=entry.vocab_size)
    if entry.context_length and spec.max_position_embeddings is None:
        spec = spec.model_copy(update={"max_position_embeddings": entry.context_length})
    return ResolvedModel(id=entry.id, source="catalog", spec=spec, location=entry.file,
                         published_parameters=entry.parameters, notices=notices)


def looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.endswith((".json", ".gguf")) \
        or os.sep in ref.replace("/", "", 1) or Path(ref).expanduser().exists()


def split_revision(ref: str, revision: str | None) -> tuple[str, str | None]:
    """``owner/name@rev`` -> (owner/name, rev). An explicit --revision must agree with an @rev."""
    if "@" in ref and not looks_like_path(ref):
        name, _, rev = ref.rpartition("@")
        if not name or not rev:
            raise InputError(f"cannot read {ref!r} as owner/name@revision")
        if revision is not None and revision != rev:
            raise InputError(f"{ref!r} names revision {rev!r} but --revision says {revision!r}")
        return name, rev
    return ref, revision


def resolve_model(ref: str, *, revision: str | None = None, source: SourceName = "auto",
                  offline: bool | None = None, token: str | None = None,
                  hub_timeout_s: float | None = None) -> ResolvedModel:
    """Locate ``ref`` (a path, ``modelscope:owner/name``, a bundled id or alias, or a Hub id) and parse
    its config."""
    ref = ref.strip()
    if not ref:
        raise InputError("the model name is empty", hint="give a Hugging Face id, an alias or a path")
    if source not in SOURCES:
        raise InputError(f"unknown --source {source!r}", hint=f"use one of: {', '.join(SOURCES)}")

    if ref.lower().startswith(MODELSCOPE_PREFIX):
        if source not in ("auto", "modelscope"):
            raise InputError(f"{ref!r} names a ModelScope model but --source says {source!r}",
                             hint="drop --source, or drop the modelscope: prefix")
        ref, source = ref[len(MODELSCOPE_PREFIX):].strip(), "modelscope"
        if not ref:
            raise InputError("modelscope: names no model", hint="write modelscope:owner/name")
    if source in ("auto", "local") and looks_like_path(ref):
        path = Path(ref).expanduser()
        if path.exists():
            return _load_local(path)
        if source == "local" or ref.startswith((".", "/", "~")) or ref.endswith((".json", ".gguf")):
            raise ModelNotFoundError(f"no such file or directory: {ref}")
    if source == "local":
        raise ModelNotFoundError(f"no such file or directory: {ref}")

    name, revision = split_revision(ref, revision)
    if source == "modelscope":
        return _load_modelscope(name, revision=revision, offline=offline, timeout_s=hub_timeout_s)
    if source == "catalog" or (source == "auto" and revision is None):
        found = _load_catalog(name)
        if found is not None:
            return found
        if source == "catalog":
            raise _not_found(name, offline=True)
    entry = load_catalog().get(name)
    if entry is not None:  # an alias asked of the Hub means its full id
        name = entry.id
    if "/" not in name:
        raise _not_found(name, offline=False)  # an id without '/' is never asked of the Hub
    return _load_hub(name, revision=revision, offline=offline, token=token, timeout_s=hub_timeout_s)


def _not_found(name: str, *, offline: bool) -> ModelNotFoundError:
    suggestions = load_catalog().suggestions(name)
    hint = f"did you mean {', '.join(suggestions)}?" if suggestions else "`gpuplan models` lists the bundled ones"
    if "/" not in name:
        hint += "; Hub ids have the form owner/name"
    elif offline:
        hint += "; without --offline gpuplan would also ask the Hub"
    return ModelNotFoundError(f"model {name!r} is not in the bundled catalog", hint=hint)


def _load_modelscope(name: str, *, revision: str | None, offline: bool | None,
                     timeout_s: float | None) -> ResolvedModel:
    from gpuplan.models.modelscope import fetch_modelscope_config  # plain HTTP, only when asked for

    try:
        config, info = fetch_modelscope_config(name, revision=revision, offline=offline, timeout_s=timeout_s)
    except HubUnavailableError as exc:
        # Only the same id: a catalog alias or Hugging Face id is not a ModelScope id.
        return _bundled_instead(name, "ModelScope", exc, revision, same_id_only=True)
    spec = parse_config(config, label=f"{info.repo_id} (ModelScope)")
    entry = load_catalog().get(info.repo_id)
    same = entry is not None and entry.id.lower() == info.repo_id.lower()
    return ResolvedModel(
        id=info.repo_id,
        source="modelscope-cache" if info.from_cache else "modelscope",
        spec=spec,
        revision=revision,
        location=info.url,
        published_parameters=entry.parameters if same and entry is not None else None,
    )


def _bundled_instead(name: str, service: str, exc: HubUnavailableError, revision: str | None, *,
                     same_id_only: bool = False) -> ResolvedModel:
    """The bundled copy of ``name`` with a notice when ``service`` is unreachable; re-raise without one."""
    entry = load_catalog().get(name)
    if entry is None or (same_id_only and entry.id.lower() != name.lower()):
        raise exc
    notice = f"{service} could not be reached ({exc.message}): using the bundled copy of {entry.id}"
    if revision:
        notice += f", which may differ from revision {revision}"
    found = _load_catalog(name, notices=(notice,))
    assert found is not None
    return found


def _load_hub(name: str, *, revision: str | None, offline: bool | None, token: str | None,
              timeout_s: float | None) -> ResolvedModel:
    from gpuplan.models import hub  # huggingface_hub is imported only when the Hub is needed

    try:
        fetched = hub.fetch_model(name, revision=revision, token=token, offline=offline, timeout_s=timeout_s)
    except HubUnavailableError as exc:
        return _bundled_instead(name, "the Hub", exc, revision)
    tokenizer_vocab = None
    spec = parse_config(fetched.config, label=f"{name} ({fetched.filename})", tokenizer_vocab=tokenizer_vocab)
    entry = load_catalog().get(name)
    return ResolvedModel(
        id=fetched.repo_id,
        source="hub-cache" if fetched.from_cache else "hub",
        spec=spec,
        revision=revision,
        commit=fetched.commit,
        location=f"{fetched.endpoint}/{fetched.repo_id}",
        published_parameters=entry.parameters if entry else None,
        safetensors_parameters=fetched.safetensors_parameters,
    )
