"""docs/cli.md is the real --help of every command, and every command and option has help."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from gpuplan.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "benchmarks" / "cli_reference.py")
cli_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_reference)  # type: ignore[union-attr]


def test_cli_md_is_up_to_date():
    assert cli_reference.TARGET.read_text(encoding="utf-8") == cli_reference.render(), (
        "docs/cli.md is out of date: run python benchmarks/cli_reference.py")


def test_the_cli_flag_table_is_what_the_engines_options_say():
    assert cli_reference.FLAGS_TARGET.read_text(encoding="utf-8") == cli_reference.render_flags_table(), (
        "gpuplan/cli/engine_flags_table.py is out of date: run python benchmarks/cli_reference.py")


def test_engines_md_is_up_to_date():
    assert cli_reference.ENGINES_TARGET.read_text(encoding="utf-8") == cli_reference.render_engines(), (
        "docs/engines.md is out of date: run python benchmarks/cli_reference.py")


def test_every_command_and_option_has_help():
    group = typer.main.get_command(app)
    missing = []
    with typer.Context(group) as ctx:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if not (command.help or "").strip():
                missing.append(name)
            for param in command.params:
                if param.name != "help" and not (getattr(param, "help", None) or "").strip():
                    missing.append(f"{name} {param.opts[0]}")
    assert missing == [], f"commands or options without help: {missing}"


def test_cli_md_documents_completion_and_every_command():
    text = cli_reference.TARGET.read_text(encoding="utf-8")
    assert "gpuplan --install-completion" in text
    for name in cli_reference.command_names():
        assert f"## gpuplan {name}\n" in text
