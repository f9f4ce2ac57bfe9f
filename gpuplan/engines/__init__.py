"""The engine registry: the only list of engine names, and the one place engine options are validated.

Each engine lives in its own module (see gpuplan/engines/base.py for what a module declares); the module is
imported only when its engine is used, so an estimate under one engine pays for no other.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Literal

from pydantic import ValidationError

from gpuplan.engines.base import EngineOptions, flag_of
from gpuplan.errors import InputError

# name -> module; the order is the order of the CLI's help panels and of docs/cli.md.
_MODULES: dict[str, str] = {
    "transformers": "gpuplan.engines.generate",
    "vllm": "gpuplan.engines.vllm",
    "sglang": "gpuplan.engines.sglang",
    "llama.cpp": "gpuplan.engines.llamacpp",
}
ENGINE_NAMES: tuple[str, ...] = tuple(_MODULES)
# Engines that size a KV cache from the GPU's memory at startup (and so need a GPU to estimate).
SERVING_ENGINES: tuple[str, ...] = ("vllm", "sglang")
LLAMACPP = "llama.cpp"
# Spellings people type for llama.cpp.
_ALIASES = {"llamacpp": LLAMACPP, "llama-cpp": LLAMACPP, "llama_cpp": LLAMACPP, "hf": "transformers"}

Spelling = Literal["keyword", "flag"]


def engine_name(name: str) -> str:
    """The registry's name for what a user typed (any case); an unknown name is an InputError."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _MODULES:
        return key
    close = difflib.get_close_matches(key, ENGINE_NAMES, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    raise InputError(f"unknown engine {name!r}", hint=f"{hint}use one of: {', '.join(ENGINE_NAMES)}")


@functools.cache
def engine_module(name: str) -> ModuleType:
    """The engine's module, imported on first use (an estimate under one engine pays for no other)."""
    return importlib.import_module(_MODULES[engine_name(name)])


def options_class(name: str) -> type[EngineOptions]:
    return engine_module(name).Options


def budgets_whole_gpu(name: str) -> bool:
    """Whether the engine spends the whole GPU by design (SGLang), so no headroom can be left free."""
    return bool(getattr(engine_module(name), "BUDGETS_WHOLE_GPU", False))


def fits_more_with_more_nodes(name: str) -> bool:
    """Whether, under this engine, a layout of more nodes (the same tensor-parallel size, more pipeline stages)
    fits whenever one of fewer nodes does: then the planner's search across nodes may start at any count."""
    return bool(getattr(engine_module(name), "FITS_MORE_WITH_MORE_NODES", False))


def default_engine(is_gguf: bool) -> str:
    """llama.cpp runs GGUF files; everything else defaults to transformers generate()."""
    return LLAMACPP if is_gguf else "transformers"


def option_owners() -> dict[str, list[str]]:
    """Every engine option's name -> the engines that take it (imports every engine module)."""
    owners: dict[str, list[str]] = {}
    for name in ENGINE_NAMES:
        for field in options_class(name).model_fields:
            owners.setdefault(field, []).append(name)
    return owners


def _spell(options: type[EngineOptions] | None, field: str, spelling: Spelling) -> str:
    if spelling == "keyword" or options is None:
        return field
    return flag_of(options, field)


def _misapplied(engine: str, names: list[str], spelling: Spelling) -> InputError:
    owners = option_owners()
    engines = sorted({e for n in names for e in owners[n]}, key=ENGINE_NAMES.index)
    spelled = [_spell(options_class(owners[n][0]), n, spelling) for n in names]
    verb = "applies" if len(names) == 1 else "apply"
    scope = f"the {engines[0]} engine only" if len(engines) == 1 else " and ".join(engines)
    return InputError(f"{', '.join(spelled)} {verb} to {scope}, not {engine}",
                      hint=_instead(engine, names) or _use(engines[0], spelling))


def _use(engine: str, spelling: Spelling) -> str:
    if engine == LLAMACPP:
        return ("use engine='llama.cpp' with a GGUF model" if spelling == "keyword"
                else "pass a .gguf file with --engine llama.cpp, or drop the flag")
    return f"use engine={engine!r}" if spelling == "keyword" else f"use --engine {engine}, or drop the flag"


def _instead(engine: str, names: list[str]) -> str | None:
    """The engine's own option for the same purpose, where it declares one (``EQUIVALENTS``)."""
    equivalents: Mapping[str, str] = getattr(engine_module(engine), "EQUIVALENTS", {})
    found = [f"{engine} takes {equivalents[n]}" for n in names if n in equivalents]
    return "; ".join(found) or None


def make_options(engine: str, values: Mapping[str, Any] | EngineOptions | None = None, *,
                 spelling: Spelling = "keyword") -> EngineOptions:
    """Validate ``values`` against ``engine``'s Options. A value of None means "not given". An option of
    another engine, an unknown name or a bad value is one InputError naming it as the caller spelled it."""
    name = engine_name(engine)
    cls = options_class(name)
    if isinstance(values, EngineOptions):
        if not isinstance(values, cls):
            raise InputError(f"{type(values).__module__}.Options is not for the {name} engine",
                             hint=f"pass {cls.__module__}.Options, or the options as keywords")
        return values
    given = {k: v for k, v in (values or {}).items() if v is not None}
    if not given:
        return _defaults(name)
    unknown = [k for k in given if k not in cls.model_fields]
    if unknown:
        owners = option_owners()
        strangers = [k for k in unknown if k not in owners]
        if strangers:
            close = difflib.get_close_matches(strangers[0], list(owners), n=1, cutoff=0.6)
            raise InputError(f"unknown option {strangers[0]!r}",
                             hint=f"did you mean {close[0]!r}?" if close else
                             f"the {name} engine takes: {', '.join(cls.model_fields) or 'no options'}")
        raise _misapplied(name, unknown, spelling)
    try:
        return cls(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        shown = _spell(cls, field, spelling) if field in cls.model_fields else field
        raise InputError(_describe(shown, err)) from None


@functools.cache
def _defaults(name: str) -> EngineOptions:
    """An engine's options with nothing given (frozen, so one instance serves every call)."""
    return options_class(name)()


_BOUNDS = {"greater_than_equal": "at least", "greater_than": "more than", "less_than_equal": "at most",
           "less_than": "less than"}


def _describe(shown: str, err: Any) -> str:
    """A pydantic error on one option, in a user's words."""
    kind, ctx, given = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "literal_error":
        return f"{shown} expects one of {ctx.get('expected', '')}, got {given!r}"
    if kind in _BOUNDS:
        return f"{shown} must be {_BOUNDS[kind]} {next(iter(ctx.values()), '')}, got {given!r}"
    return f"{shown}: {str(err['msg']).removeprefix('Value error, ')}, got {given!r}"
