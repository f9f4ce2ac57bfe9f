"""Engine options as command-line flags, made from the engines' Options classes (gpuplan/engines/).

A command decorated with :func:`with_engine_flags` gets one flag per engine option, grouped in a help panel
per engine, its help text the field's description. The command receives the flags that were given as one
mapping, ``engine_flags``, which :func:`engine_options` validates against the chosen engine: a flag of another
engine is one message naming it, from the registry.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

if typing.TYPE_CHECKING:  # click's types only name the arguments; typer carries its own copy of click
    import click

    from gpuplan.engines.base import EngineOptions

_PANEL_NAMES = {"transformers": "transformers", "vllm": "vLLM", "sglang": "SGLang", "llama.cpp": "llama.cpp"}


class _Flag:
    """One engine option as a CLI parameter, from its row of gpuplan/cli/engine_flags_table.py."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.name: str = row["name"]
        self.engines: list[str] = list(row["engines"])
        self.flag: str = row["flag"]
        self.short: str | None = row["short"]
        self.negative: bool = row["negative"]
        self.sweep: bool = row["sweep"]
        self.boolean: bool = row["boolean"]
        self.metavar: str = row["metavar"]
        self.help: str = row["help"]
        names = [_PANEL_NAMES[e] for e in self.engines]
        self.panel = (", ".join(names[:-1]) + " and " if len(names) > 1 else "") + names[-1] + " options"

    def parameter(self) -> inspect.Parameter:
        names = [self.flag] + ([self.short] if self.short else [])
        if self.negative:
            option = typer.Option(*names, help=self.help, rich_help_panel=self.panel)
            annotation: Any = Annotated[bool, option]
            default: Any = False
        elif self.boolean:
            dashed = self.name.replace("_", "-")
            option = typer.Option(f"--{dashed}/--no-{dashed}", help=self.help, rich_help_panel=self.panel,
                                  show_default=False)
            annotation, default = Annotated[bool | None, option], None
        else:
            option = typer.Option(*names, help=self.help, rich_help_panel=self.panel, show_default=False,
                                  metavar=self.metavar)
            annotation, default = Annotated[str | None, option], None
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    def value(self, given: Any) -> Any:
        """The option's value from the CLI's, None when the flag was not given."""
        if self.negative:
            return False if given else None
        return given


def _metavar(annotation: Any) -> str:
    """The CLI's <int> / <float> / <str> for an option typed so (its value reaches the Options class as text)."""
    kinds = set(typing.get_args(annotation)) or {annotation}
    for kind, label in ((int, "<int>"), (float, "<float>")):
        if kind in kinds:
            return label
    return "<str>"


def flag_rows() -> list[dict[str, Any]]:
    """Every engine option as a CLI flag, read from the engines' Options classes (imports every engine).

    benchmarks/cli_reference.py writes these rows to gpuplan/cli/engine_flags_table.py, which the CLI reads
    at start-up instead of importing four engines to list their flags; tests/test_cli_reference.py checks
    that the table is what the Options classes say."""
    from gpuplan.engines import ENGINE_NAMES, option_owners, options_class
    from gpuplan.engines.base import flag_of, option_extra

    owners = option_owners()
    rows = []
    for name in sorted(owners, key=lambda n: min(ENGINE_NAMES.index(e) for e in owners[n])):
        cls = options_class(owners[name][0])
        field = cls.model_fields[name]
        extra = option_extra(cls, name)
        negative = bool(extra.get("negative"))
        rows.append({
            "name": name, "engines": owners[name],
            "flag": "--no-" + name.replace("_", "-") if negative else flag_of(cls, name),
            "short": extra.get("short"), "negative": negative, "sweep": bool(extra.get("sweep")),
            "boolean": field.annotation in (bool, bool | None),
            "metavar": extra.get("metavar") or _metavar(field.annotation), "help": _shared_help(name, owners[name])})
    return rows


def _shared_help(name: str, engines: list[str]) -> str:
    """The help of an option: its first engine's description; when every engine's description names its own
    engine (each says what it means for that engine, as --engine-version does), all of them in engine order."""
    from gpuplan.engines import options_class

    texts = [options_class(e).model_fields[name].description or "" for e in engines]
    if len(texts) > 1 and all(t.startswith(_PANEL_NAMES[e] + " ") for t, e in zip(texts, engines, strict=True)):
        return " ".join(texts)
    return texts[0]


@functools.lru_cache(maxsize=1)
def _flags() -> tuple[_Flag, ...]:
    from gpuplan.cli.engine_flags_table import ROWS

    return tuple(_Flag(row) for row in ROWS)


class _WithEngineFlags:
    """A command with every engine option added as a flag. The flags are added when the CLI is built for a
    run, not when gpuplan.cli.app is imported (`gpuplan --version` and the import stay light)."""

    def __init__(self, command: Callable[..., Any]) -> None:
        self.command = command
        self.__name__, self.__doc__ = command.__name__, command.__doc__
        self.__module__ = command.__module__

    @functools.cached_property
    def __signature__(self) -> inspect.Signature:  # type: ignore[override]
        hints = typing.get_type_hints(self.command, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(self.command).parameters.values() if p.name != "engine_flags"]
        return inspect.Signature([*own, *(f.parameter() for f in _flags())])

    @property
    def __annotations__(self) -> dict[str, Any]:  # type: ignore[override]
        return {p.name: p.annotation for p in self.__signature__.parameters.values()}

    def __call__(self, **kwargs: Any) -> Any:
        given = {f.name: f.value(kwargs.pop(f.name, None)) for f in _flags()}
        return self.command(**kwargs, engine_flags={k: v for k, v in given.items() if v is not None})


def with_engine_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every engine option as a flag to ``command``, which takes the ones given as ``engine_flags``."""
    return _WithEngineFlags(command)


class PanelCommand(TyperCommand):
    """A command whose --help lists its options in panels (``rich_help_panel``), plain text as the rest of
    gpuplan's help: the general options first, then one panel per engine."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        args: list[tuple[str, str]] = []
        panels: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append(record)
            else:
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        for title, records in panels.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


def flag_runs(engine_flags: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One mapping per run: a flag that sweeps (``--max-model-len 8k,32k``) gives one run per value."""
    from gpuplan.cli.options import parse_int_list

    by_name = {f.name: f for f in _flags()}
    axes: list[list[tuple[str, Any]]] = []
    for name, value in engine_flags.items():
        flag = by_name[name]
        if flag.sweep and isinstance(value, str) and "," in value:
            # Sweeping flags take token counts, where "32,768" is one value (cli/options.py).
            axes.append([(name, v) for v in parse_int_list(value, option=flag.flag, minimum=0, tokens=True)])
        else:
            axes.append([(name, value)])
    return [dict(combo) for combo in itertools.product(*axes)]


def engine_options(engine: str, values: Mapping[str, Any]) -> EngineOptions:
    """``values`` validated for ``engine``, errors spelled as flags (--ubatch-size, not ubatch_size)."""
    from gpuplan.engines import make_options

    return make_options(engine, values, spelling="flag")
