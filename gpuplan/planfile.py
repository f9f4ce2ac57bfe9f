"""Plan files: the deployments a team runs, checked against their GPUs in CI (``gpuplan check``).

A plan file is YAML::

    version: 1                      # optional
    defaults:                       # optional: keys every deployment inherits
      engine: vllm
      gpu: H100
    deployments:
      - name: chat
        model: meta-llama/Llama-3.1-8B-Instruct
        max_model_len: 32k
        min_concurrency: 8

Every key is checked (a misspelled one is an error, not ignored), and every error names the file, the
line and the key. docs/ci.md describes the keys; :func:`check` evaluates a file or a dict.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from gpuplan.engines import (
    ENGINE_NAMES,
    SERVING_ENGINES,
    budgets_whole_gpu,
    default_engine,
    engine_name,
    make_options,
    option_owners,
    options_class,
)
from gpuplan.errors import GpuplanError, InputError
from gpuplan.results import CheckResult, DeploymentCheck, EstimateResult


@dataclass(frozen=True)
class Issue:
    """One problem in a plan file, where it is."""

    file: str | None
    line: int | None
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p is not None)
        return f"{where}: {self.message}" if where else self.message


class PlanFileError(InputError):
    """A plan file that cannot be read or has invalid keys; ``issues`` lists every problem with its line."""

    def __init__(self, issues: list[Issue]) -> None:
        issues = sorted(issues, key=lambda i: (i.file or "", i.line or 0))
        self.issues = issues
        first = issues[0]
        if len(issues) == 1:
            message = str(first)
        else:
            message = f"{len(issues)} problems in the plan file:\n" + "\n".join(
                f"  {i}" + (f" ({i.hint})" if i.hint else "") for i in issues)
        super().__init__(message, hint=first.hint if len(issues) == 1 else None)


def _token_count(value: Any) -> Any:
    from gpuplan.units import parse_token_count

    if isinstance(value, str):
        try:
            return parse_token_count(value)
        except InputError:
            raise ValueError(f"expects a whole number of tokens such as 4096 or 4k, got {value!r}") from None
    return value


class DeploymentFields(BaseModel):
    """Every key a deployment or the defaults block may set; None means the engine's own default."""

    # strict: YAML already types its values, so `batch: true` or `gpus: 2.0` is a mistake, not a 1 or a 2.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    model: str | None = Field(default=None, description="Hugging Face id, bundled alias, or a path ('./' and "
                                                        "'../' are relative to the plan file)")
    revision: str | None = Field(default=None, description="Hub branch, tag or commit")
    source: Literal["auto", "local", "catalog", "hub", "modelscope"] | None = None
    engine: str | None = Field(default=None, description="transformers, vllm, sglang or llama.cpp; default: "
                                                          "llama.cpp for a .gguf file, else transformers")
    dtype: str | None = Field(default=None, description="weights: auto, fp16, bf16, fp8, int8, int4, nf4 ...")
    kv_dtype: str | None = Field(default=None, description="KV cache: auto, fp16, bf16, fp8")
    gpu: str | None = Field(default=None, description="GPU from the catalog (`gpuplan gpus`)")
    gpu_memory: str | None = Field(default=None, description="memory per GPU, for a card not in the catalog "
                                                             "or to override it: 79.2GiB")
    gpus: int | None = Field(default=None, ge=1, description="GPUs: tensor_parallel x pipeline_parallel")
    tensor_parallel: int | None = Field(default=None, ge=1)
    pipeline_parallel: int | None = Field(default=None, ge=1)
    seq: int | None = Field(default=None, ge=1, description="tokens per sequence (4k works); serving engines: "
                                                            "max_model_len")
    batch: int | None = Field(default=None, ge=1, description="sequences at once; serving: the default "
                                                              "min_concurrency")
    new_tokens: int | None = Field(default=None, ge=0, description="transformers: generated tokens of seq")
    min_concurrency: float | None = Field(default=None, gt=0, description="serving: requests of max_model_len "
                                                                          "tokens that must fit at once")
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="the engine's options by name (gpu_memory_utilization, ctx_size ...; "
                                          "`gpuplan estimate --help` lists them by engine); they may also be "
                                          "written as keys of their own")
    headroom: str | None = Field(default=None, description="GPU memory that must stay free: 10% (of the GPU) "
                                                           "or 4GiB")

    @field_validator("seq", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        return _token_count(value)

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return engine_name(value)
        except InputError:
            raise ValueError(f"expects one of {', '.join(ENGINE_NAMES)}, got {value!r}") from None

    @field_validator("gpu_memory", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"needs a unit: write {value:g}GiB (2^30 bytes, as nvidia-smi counts) or {value:g}GB")
        from gpuplan.units import parse_size

        if isinstance(value, str):
            try:
                parse_size(value)
            except InputError:
                raise ValueError(f"expects a memory size such as 80GB or 79.2GiB, got {value!r}") from None
        return value

    @field_validator("headroom", mode="before")
    @classmethod
    def _headroom(cls, value: Any) -> Any:
        if isinstance(value, str):
            parse_headroom(value, capacity=1)
        return value


class Deployment(DeploymentFields):
    """One deployment: a name, a model, and the keys it sets or inherits."""

    name: str = Field(min_length=1, description="unique within the file; reports name deployments by it")
    model: str = Field(min_length=1)  # type: ignore[assignment]
    # The keys the deployment sets itself (engine options too): a key inherited from defaults that its engine
    # does not read is ignored, one it sets itself is a mistake worth naming.
    _explicit: frozenset[str] = PrivateAttr(default=frozenset())


class PlanFile(BaseModel):
    """A validated plan file: its defaults merged into every deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    defaults: DeploymentFields = Field(default_factory=DeploymentFields)
    deployments: list[Deployment] = Field(min_length=1)


def parse_headroom(text: str, *, capacity: int) -> int:
    """'10%' of ``capacity``, or a size ('4GiB'), in bytes."""
    from gpuplan.units import parse_size

    raw = text.strip()
    if raw.endswith("%"):
        try:
            percent = float(raw[:-1])
        except ValueError:
            raise ValueError(f"expects a percentage such as 10% or a size such as 4GiB, got {text!r}") from None
        if not 0 <= percent < 100:
            raise ValueError(f"a percentage between 0 and 100, got {text!r}")
        return int(capacity * percent / 100)
    try:
        return parse_size(raw)
    except InputError:
        raise ValueError(f"expects a percentage such as 10% or a size such as 4GiB, got {text!r}") from None


# ---- reading YAML with line numbers -------------------------------------------------------------------


class _Located:
    """The data of a YAML document and the line of every key and list item in it."""

    def __init__(self, data: Any, lines: dict[tuple[Any, ...], int], file: str | None) -> None:
        self.data = data
        self.lines = lines
        self.file = file

    def line(self, *path: Any) -> int | None:
        """The line of ``path``, else of the nearest enclosing key or item."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def issue(self, path: tuple[Any, ...], message: str, hint: str | None = None) -> Issue:
        return Issue(self.file, self.line(*path), message, hint)


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines.setdefault(path + (key.value,), key.start_mark.line + 1)
                _walk(value, path + (key.value,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _walk(item, path + (index,), lines)


def _duplicate_keys(node: yaml.Node, file: str | None) -> list[Issue]:
    """Keys given twice in one mapping: YAML loaders keep the last silently, which hides typos."""
    issues: list[Issue] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if key.value in seen:
                    issues.append(Issue(file, line, f"key {key.value!r} is given twice (first on line "
                                                    f"{seen[key.value]})"))
                else:
                    seen[key.value] = line
            issues += _duplicate_keys(value, file)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            issues += _duplicate_keys(item, file)
    return issues


def load_yaml(text: str, file: str | None) -> _Located:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PlanFileError([Issue(file, None, "the plan file is empty",
                                       "it needs a deployments: list (see docs/ci.md)")])
        duplicates = _duplicate_keys(node, file)
        if duplicates:
            raise PlanFileError(duplicates)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise PlanFileError([Issue(file, line, f"not valid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise PlanFileError([Issue(file, None, f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    lines: dict[tuple[Any, ...], int] = {(): node.start_mark.line + 1}
    # Walked after construction: merge keys (<<: *anchor) are flattened into the mappings by then.
    _walk(node, (), lines)
    return _Located(data, lines, file)


# ---- validation ------------------------------------------------------------------------------------


_EXPECTED = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "string_type": "text", "bool_type": "true or false",
    "bool_parsing": "true or false", "list_type": "a list", "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
}


_UNION_EXPECTED = {"n_gpu_layers": "a number of layers or all", "parallel": "a number or auto"}


def _describe(err: dict[str, Any], key: str, valid_keys: list[str]) -> tuple[str, str | None]:
    """A pydantic error as 'what is wrong' and a hint, in the plan file's words."""
    kind, ctx, given = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, valid_keys, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid_keys)}"
        return f"unknown key {key!r}", hint
    if kind == "missing":
        return f"missing required key {key!r}", None
    if kind == "literal_error":
        return f"{key} expects one of {ctx.get('expected', '')}, got {given!r}", None
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        limit = next(iter(ctx.values()), "")
        return f"{key} must be {bound} {limit}, got {given!r}", None
    if kind in ("too_short",) and isinstance(given, (list, str)):
        return f"{key} must not be empty", None
    if key in _UNION_EXPECTED and len(err["loc"]) > 1:
        return f"{key} expects {_UNION_EXPECTED[key]}, got {given!r}", None
    if kind == "value_error":
        return f"{key} {err['msg'].removeprefix('Value error, ')}", None
    for prefix, expected in _EXPECTED.items():
        if kind == prefix:
            return f"{key} expects {expected}, got {given!r}", None
    # Union types report one error per member; the first member names what was expected.
    return f"{key}: {err['msg']}", None


def _deployment_label(raw: Any, index: int) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        return f"deployment {raw['name']!r}"
    return f"deployment #{index + 1}"


def _validation_issues(exc: ValidationError, located: _Located, base: tuple[Any, ...], label: str,
                       valid_keys: list[str], skip: set[str] | None = None,
                       origin: dict[str, tuple[Any, ...]] | None = None) -> list[Issue]:
    issues: list[Issue] = []
    reported: set[str] = set()
    for err in exc.errors():
        loc = err["loc"]
        key = str(loc[0]) if loc else ""
        if key in reported or (skip and key in skip):
            continue  # one message per key: a union reports each of its members
        reported.add(key)
        message, hint = _describe(err, key, valid_keys)
        path = (origin or {}).get(key, base + ((key,) if err["type"] != "missing" else ()))
        prefix = f"{label}: " if label else ""
        issues.append(located.issue(path, prefix + message, hint))
    return issues


def parse_plan(located: _Located, base_dir: Path | None = None) -> PlanFile:
    """Validate a loaded plan file; raise PlanFileError with every problem found."""
    data = located.data
    if not isinstance(data, dict):
        raise PlanFileError([located.issue((), "a plan file is a mapping with a deployments: list",
                                           "see docs/ci.md for an example")])
    issues: list[Issue] = []
    top_keys = list(PlanFile.model_fields)
    for key in data:
        # x- keys are free for YAML anchors (x-base: &base {...}), as in Compose files.
        if key not in top_keys and not str(key).startswith("x-"):
            close = difflib.get_close_matches(str(key), top_keys, n=1, cutoff=0.6)
            issues.append(located.issue((key,), f"unknown top-level key {key!r}",
                                        f"did you mean {close[0]!r}?" if close else f"valid keys: "
                                                                                    f"{', '.join(top_keys)}"))
    version = data.get("version", 1)
    if version != 1:
        issues.append(located.issue(("version",), f"version {version!r} is not supported",
                                    "this gpuplan reads version 1"))
    owners = option_owners()
    field_keys = [*DeploymentFields.model_fields, *owners]
    deployment_keys = ["name", *field_keys]
    raw_defaults = data.get("defaults") or {}
    defaults_bad: set[str] = set()
    if not isinstance(raw_defaults, dict):
        issues.append(located.issue(("defaults",), "defaults expects a mapping of keys"))
        raw_defaults = {}
    else:
        lifted, _, lift_issues = _lift_engine_options(raw_defaults, {k: ("defaults", k) for k in raw_defaults},
                                                      located, "defaults", field_keys)
        issues += lift_issues
        try:
            defaults = DeploymentFields.model_validate(lifted)
        except ValidationError as exc:
            issues += _validation_issues(exc, located, ("defaults",), "defaults", field_keys)
            defaults_bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        else:
            if defaults.gpu is not None:
                issues += _gpu_issues(defaults.gpu, located, ("defaults", "gpu"), "defaults")
    raw_deployments = data.get("deployments")
    deployments: list[Deployment] = []
    if raw_deployments is None:
        issues.append(located.issue((), "missing required key 'deployments'",
                                    "list the deployments to check under deployments: (see docs/ci.md)"))
    elif not isinstance(raw_deployments, list) or not raw_deployments:
        issues.append(located.issue(("deployments",), "deployments expects a non-empty list of deployments"))
    else:
        names: dict[str, int] = {}
        for index, raw in enumerate(raw_deployments):
            label = _deployment_label(raw, index)
            if not isinstance(raw, dict):
                issues.append(located.issue(("deployments", index), f"{label} expects a mapping of keys"))
                continue
            merged = {**{k: v for k, v in raw_defaults.items() if k not in defaults_bad}, **raw}
            if isinstance(raw_defaults.get("engine_options"), dict) and isinstance(raw.get("engine_options"), dict):
                merged["engine_options"] = {**raw_defaults["engine_options"], **raw["engine_options"]}
            origin = {k: ("defaults", k) for k in raw_defaults if k not in raw}
            origin.update({k: ("deployments", index, k) for k in raw})
            merged, option_origin, lift_issues = _lift_engine_options(merged, origin, located, label, field_keys)
            issues += lift_issues
            try:
                deployment = Deployment.model_validate(merged)
            except ValidationError as exc:
                issues += _validation_issues(exc, located, ("deployments", index), label, deployment_keys,
                                             skip=defaults_bad, origin=origin)
                continue
            explicit = _explicit_keys(raw)
            options, option_issues = _engine_option_issues(deployment, option_origin, explicit, located, label,
                                                           field_keys)
            issues += option_issues
            deployment = deployment.model_copy(update={"engine_options": options})
            if deployment.name in names:
                issues.append(located.issue(("deployments", index, "name"),
                                            f"deployment name {deployment.name!r} is used twice (first by "
                                            f"deployment #{names[deployment.name] + 1})"))
            names.setdefault(deployment.name, index)
            issues += _consistency_issues(deployment, located, ("deployments", index), origin)
            if base_dir is not None and deployment.model.startswith(("./", "../")):
                deployment = deployment.model_copy(update={"model": str((base_dir / deployment.model).resolve())})
            deployment._explicit = frozenset(explicit)
            deployments.append(deployment)
    if issues:
        raise PlanFileError(issues)
    lifted_defaults, _, _ = _lift_engine_options(raw_defaults, {}, located, "defaults", field_keys)
    return PlanFile(defaults=DeploymentFields.model_validate(lifted_defaults), deployments=deployments)


def _explicit_keys(raw: dict[str, Any]) -> set[str]:
    """The keys a deployment sets itself, its engine_options' keys among them."""
    keys = set(raw)
    if isinstance(raw.get("engine_options"), dict):
        keys |= set(raw["engine_options"])
    return keys


def _lift_engine_options(raw: dict[str, Any], origin: dict[str, tuple[Any, ...]], located: _Located, label: str,
                         valid_keys: list[str]) -> tuple[dict[str, Any], dict[str, tuple[Any, ...]], list[Issue]]:
    """Engine options written as keys of their own, moved into engine_options; where each one was written."""
    owners = option_owners()
    options = raw.get("engine_options", {})
    if not isinstance(options, dict):
        return dict(raw), {}, []  # a non-mapping engine_options is reported by the model's validation
    lifted = {k: v for k, v in raw.items() if k not in owners}
    merged = dict(options)
    option_origin = {k: origin.get("engine_options", ("engine_options",)) + (k,) for k in options}
    for key in raw:
        if key in owners:
            merged[key] = raw[key]
            option_origin[key] = origin.get(key, (key,))
    issues: list[Issue] = []
    for key in merged:
        if key not in owners:
            close = difflib.get_close_matches(str(key), valid_keys, n=1, cutoff=0.6)
            issues.append(located.issue(option_origin[key], f"{label}: unknown engine option {key!r}",
                                        f"did you mean {close[0]!r}?" if close else
                                        f"engine options: {', '.join(owners)}"))
    lifted["engine_options"] = {k: v for k, v in merged.items() if k in owners}
    return lifted, option_origin, issues


def _engine_option_issues(d: Deployment, option_origin: dict[str, tuple[Any, ...]], explicit: set[str],
                          located: _Located, label: str, valid_keys: list[str]) -> tuple[dict[str, Any], list[Issue]]:
    """The deployment's engine options checked against its engine's Options (when the engine is named): an
    inherited option the engine does not read is dropped, one set here is an error, and so is a bad value."""
    if d.engine is None:
        return d.engine_options, []  # known only once the model is: checked when it is evaluated
    cls = options_class(d.engine)
    kept = {k: v for k, v in d.engine_options.items() if k in cls.model_fields or k in explicit}
    issues: list[Issue] = []
    for key in [k for k in kept if k not in cls.model_fields]:
        try:
            make_options(d.engine, {key: kept.pop(key)})
        except InputError as exc:
            issues.append(located.issue(option_origin.get(key, ()), f"{label}: {exc.message}"))
    try:
        cls(**{k: v for k, v in kept.items() if v is not None})
    except ValidationError as exc:
        issues += _validation_issues(exc, located, (), label, valid_keys, origin=option_origin)
    return kept, issues


def _gpu_issues(name: str, located: _Located, path: tuple[Any, ...], label: str) -> list[Issue]:
    """An unknown GPU name, found before any model is loaded."""
    from gpuplan.gpus.catalog import load_catalog

    try:
        load_catalog().resolve(name)
    except InputError as exc:
        return [located.issue(path, f"{label}: {exc.message}", exc.hint)]
    return []


def _consistency_issues(d: Deployment, located: _Located, base: tuple[Any, ...],
                        origin: dict[str, tuple[Any, ...]]) -> list[Issue]:
    """What each key is valid alone but not together, and GPU names, which the catalog resolves cheaply."""
    label = f"deployment {d.name!r}"
    issues: list[Issue] = []

    def at(key: str) -> tuple[Any, ...]:
        return origin.get(key, base)

    if d.gpu is None and d.gpu_memory is None:
        issues.append(located.issue(base, f"{label}: names no GPU",
                                    "add gpu: (a name from `gpuplan gpus`) or gpu_memory: 79.2GiB"))
    if d.gpu is not None and origin.get("gpu", ("deployments",))[0] == "deployments":
        issues += _gpu_issues(d.gpu, located, at("gpu"), label)
    tp, pp = d.tensor_parallel, d.pipeline_parallel
    if d.gpus is not None and tp is not None and pp is not None and tp * pp != d.gpus:
        issues.append(located.issue(at("gpus"), f"{label}: gpus {d.gpus} is not tensor_parallel {tp} x "
                                                f"pipeline_parallel {pp}", "give gpus, or the two sizes"))
    elif d.gpus is not None and (tp or pp) and d.gpus % (tp or pp or 1):
        which, size = ("tensor_parallel", tp) if tp else ("pipeline_parallel", pp)
        issues.append(located.issue(at("gpus"), f"{label}: gpus {d.gpus} is not a multiple of {which} {size}"))
    if d.engine is not None and d.engine not in SERVING_ENGINES and d.min_concurrency is not None \
            and origin.get("min_concurrency", ("defaults",))[0] == "deployments":
        issues.append(located.issue(at("min_concurrency"), f"{label}: min_concurrency applies to "
                                                           f"{' and '.join(SERVING_ENGINES)}, not {d.engine}"))
    return issues


def load_plan(source: str | Path | dict[str, Any] | _Located) -> tuple[PlanFile, _Located]:
    """Read and validate a plan file (a path, the already-parsed dict, or YAML text read by load_yaml)."""
    if isinstance(source, _Located):
        return parse_plan(source), source
    if isinstance(source, dict):
        located = _Located(source, {}, None)
        return parse_plan(located), located
    path = Path(source)
    shown = str(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanFileError([Issue(None, None, f"{shown}: no such file")]) from None
    except IsADirectoryError:
        raise PlanFileError([Issue(None, None, f"{shown} is a folder, not a plan file")]) from None
    except UnicodeDecodeError:
        raise PlanFileError([Issue(shown, None, "not a text file (UTF-8 YAML expected)")]) from None
    except OSError as exc:
        raise PlanFileError([Issue(None, None, f"cannot read {shown}: {exc.strerror or exc}")]) from None
    located = load_yaml(text, shown)
    return parse_plan(located, base_dir=path.parent), located


# ---- evaluation ------------------------------------------------------------------------------------


def _sizes(d: Deployment) -> tuple[int, int]:
    tp, pp = d.tensor_parallel, d.pipeline_parallel
    if d.gpus is not None:
        if tp is None and pp is None:
            return d.gpus, 1
        if tp is None:
            return d.gpus // (pp or 1), pp or 1
        if pp is None:
            return tp, d.gpus // tp
    return tp or 1, pp or 1


def _gib(n: int) -> str:
    from gpuplan.units import GiB

    return f"{n / GiB:,.2f} GiB"


def evaluate(d: Deployment, resolved: Any, *, line: int | None) -> DeploymentCheck:
    """Estimate one deployment and judge it: serving engines must start and hold min_concurrency
    requests of max_model_len tokens; every engine must leave the headroom free."""
    from gpuplan.api import estimate

    engine = d.engine or default_engine(resolved.gguf is not None)
    serving = engine in SERVING_ENGINES
    if not serving and d.min_concurrency is not None and "min_concurrency" in d._explicit:
        raise InputError(f"min_concurrency applies to {' and '.join(SERVING_ENGINES)}, not {engine}")
    whole_gpu = budgets_whole_gpu(engine)
    if whole_gpu and d.headroom is not None and "headroom" in d._explicit:
        raise InputError(f"headroom does not apply to {engine}: it budgets the whole GPU (mem_fraction_static for "
                         "weights and KV cache, the rest for activations and CUDA graphs)",
                         hint=f"drop headroom from this deployment; a headroom in defaults is ignored for {engine}")
    tp, pp = _sizes(d)
    fields = options_class(engine).model_fields
    options = {k: v for k, v in d.engine_options.items() if k in fields or k in d._explicit}
    # A serving deployment's max_model_len is its seq; one set beside an inherited seq wins.
    seq = None if serving and options.get("max_model_len") is not None else d.seq
    result: EstimateResult = estimate(
        resolved, dtype=d.dtype or "auto", kv_dtype=d.kv_dtype or "auto", batch=d.batch or 1, seq=seq,
        new_tokens=d.new_tokens or 0, engine=engine, gpu=d.gpu, gpu_memory=d.gpu_memory, tensor_parallel=tp,
        pipeline_parallel=pp, **options)
    capacity = result.gpu_memory_bytes or 0
    required_free = parse_headroom(d.headroom, capacity=capacity) if d.headroom and not whole_gpu else 0
    free = capacity - result.total_bytes
    reasons: list[str] = []
    s = result.serving
    min_concurrency: float | None = None
    if s is not None:
        from gpuplan.engines.serving import beyond_context

        min_concurrency = d.min_concurrency if d.min_concurrency is not None else float(d.batch or 1)
        refused = beyond_context(engine, resolved.spec, s.max_model_len)
        if refused:
            reasons.append(refused)
        if result.total_bytes > capacity:
            reasons.append(f"needs {_gib(result.total_bytes)} per GPU, the GPU has {_gib(capacity)}")
        if not s.fits_one_request:
            reasons.append(f"one request of {s.max_model_len:,} tokens does not fit: the KV cache holds "
                           f"{s.kv_cache_tokens:,} tokens (the longest context that fits is "
                           f"{s.max_model_len_that_fits:,})")
        elif s.max_concurrency < min_concurrency:
            reasons.append(f"the KV cache holds {s.max_concurrency:.2f} requests of {s.max_model_len:,} tokens, "
                           f"min_concurrency is {min_concurrency:g}")
    elif result.total_bytes > capacity:
        reasons.append(f"needs {_gib(result.total_bytes)} per GPU, the GPU has {_gib(capacity)}")
    if not reasons and not whole_gpu and d.headroom is not None and free < required_free:
        reasons.append(f"leaves {_gib(free)} free per GPU, headroom {d.headroom} asks for {_gib(required_free)}")
    return DeploymentCheck(
        name=d.name, line=line, passed=not reasons, reasons=reasons, model=result.model, engine=engine,
        gpu=result.gpu or "", gpus=tp * pp, tensor_parallel=tp, pipeline_parallel=pp, gpu_memory_bytes=capacity,
        total_bytes=result.total_bytes, free_bytes=free, required_free_bytes=required_free,
        max_model_len=s.max_model_len if s else None, max_concurrency=s.max_concurrency if s else None,
        min_concurrency=min_concurrency, max_model_len_that_fits=s.max_model_len_that_fits if s else None,
        estimate=result)


def check(source: str | Path | dict[str, Any] | _Located, *, offline: bool | None = None) -> CheckResult:
    """Check every deployment of a plan file (a path or a dict); see docs/ci.md.

    A bad file raises :class:`PlanFileError` (an InputError); a model or GPU that cannot be found
    raises its usual error, its message naming the deployment and line.
    """
    from gpuplan.api import load_model

    plan, located = load_plan(source)
    checks: list[DeploymentCheck] = []
    models: dict[tuple[str, str | None, str], Any] = {}
    for index, d in enumerate(plan.deployments):
        line = located.line("deployments", index)
        try:
            key = (d.model, d.revision, d.source or "auto")
            if key not in models:
                models[key] = load_model(d.model, revision=d.revision, source=d.source or "auto",  # type: ignore[arg-type]
                                         offline=offline)
            checks.append(evaluate(d, models[key], line=line))
        except GpuplanError as exc:
            issue = Issue(located.file, line, f"deployment {d.name!r}: {exc.message}", exc.hint)
            exc.message = str(issue)
            exc.args = (exc.message,)
            exc.issues = [issue]  # type: ignore[attr-defined]
            raise
    failed = [c.name for c in checks if not c.passed]
    return CheckResult(file=located.file, passed=not failed, failed=failed, deployments=checks)
