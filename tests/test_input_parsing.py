"""Values typed at the command line: sizes need their unit, grouped digits are one number, names ignore case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuplan.cli.app import app
from gpuplan.cli.options import normalize_choice, parse_int_list
from gpuplan.errors import InputError
from gpuplan.units import GB, GiB, parse_size, parse_token_count

runner = CliRunner()
EXAMPLE_PLAN = Path(__file__).resolve().parents[1] / "examples" / "gpuplan.yaml"


@pytest.mark.parametrize("text,size", [("24GiB", 24 * GiB), ("24GB", 24 * GB), ("512MiB", 512 * 2**20),
                                       ("1024B", 1024), ("79.2 GiB", int(79.2 * GiB))])
def test_sizes_with_units(text, size):
    assert parse_size(text) == size


def test_a_bare_size_needs_its_unit():
    with pytest.raises(InputError, match="memory size '24' has no unit") as info:
        parse_size("24")
    assert "24GiB" in (info.value.hint or "") and "24GB" in (info.value.hint or "")


def test_gpu_memory_without_unit_is_refused_at_the_cli():
    result = runner.invoke(app, ["estimate", "meta-llama/Llama-3.1-8B-Instruct", "--gpu-memory", "24"])
    assert result.exit_code == 2
    assert "memory size '24' has no unit" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("text,tokens,values", [
    ("1,000", True, [1000]), ("32,768", True, [32768]), ("1,000", False, [1000]), ("2,048", False, [2048]),
    ("1,8,32", False, [1, 8, 32]), ("1,128", False, [1, 128]), ("4k,8k", True, [4096, 8192]),
    ("512, 768", True, [512, 768]),
])
def test_grouped_digits_and_lists(text, tokens, values):
    assert parse_int_list(text, option="--seq", tokens=tokens) == values


def test_token_count_reads_grouped_digits():
    assert parse_token_count("32,768") == 32768
    with pytest.raises(InputError):
        parse_token_count("32,76")


def test_estimate_seq_with_grouped_digits_is_one_value():
    result = runner.invoke(app, ["estimate", "meta-llama/Llama-3.1-8B-Instruct", "--seq", "1,000", "--format",
                                 "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["seq"] == 1000


def test_choices_ignore_case():
    assert normalize_choice("VLLM", ("transformers", "vllm"), option="--engine") == "vllm"
    with pytest.raises(InputError, match="unknown --engine 'foo'"):
        normalize_choice("foo", ("vllm",), option="--engine")


@pytest.mark.parametrize("args", [
    ["estimate", "meta-llama/Llama-3.1-8B-Instruct", "--format", "JSON"],
    ["estimate", "meta-llama/Llama-3.1-8B-Instruct", "--engine", "VLLM", "--gpu", "H100", "--format", "Json"],
    ["sweep", "meta-llama/Llama-3.1-8B-Instruct", "--seq", "1k,2k", "--engine", "Transformers", "--format", "JSON"],
    ["check", str(EXAMPLE_PLAN), "--format", "JSON"],
])
def test_format_and_engine_in_any_case(args):
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    json.loads(result.stdout)
