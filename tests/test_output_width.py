"""At 80 columns no table cell is cut: ids, GPU names and numbers people copy come out whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from gpuplan.cli.app import app
from gpuplan.cli.output import Col, fitted_table, gpu_table, models_table
from gpuplan.gpus.catalog import load_catalog
from gpuplan.models.catalog import load_catalog as load_models

runner = CliRunner()
EXAMPLE_PLAN = Path(__file__).resolve().parents[1] / "examples" / "gpuplan.yaml"
WIDTH = 80


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _assert_whole(text: str, words: list[str]) -> None:
    for line in _lines(text):
        assert len(line) <= WIDTH, line
        assert "…" not in line, line
    for word in words:
        assert word in text, word


def _render(table) -> str:
    console = Console(width=WIDTH, highlight=False, emoji=False, color_system=None)
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def test_gpu_table_at_80_columns_keeps_every_name_and_interconnect_word():
    gpus = list(load_catalog().gpus)
    text = _render(gpu_table(gpus, width=WIDTH))
    _assert_whole(text, [g.name for g in gpus] + [w for g in gpus for w in g.interconnect.split()])
    assert "GiB" in text and "interconnect" in text


def test_models_table_at_80_columns_keeps_ids_aliases_and_exact_counts():
    entries = load_models().entries
    text = _render(models_table(entries, width=WIDTH))
    _assert_whole(text, [e.id for e in entries] + [a for e in entries for a in e.aliases])
    # Exact counts only: no name labels such as "A2.7B" or "7B".
    assert "14,315,784,192*" in text  # Qwen1.5-MoE-A2.7B, counted from its config
    for line in _lines(text)[3:]:
        last = line.split()[-1] if line.split() else ""
        assert not last.endswith("B"), line


def test_fitted_table_drops_whole_columns_in_order():
    columns = [Col("name"), Col("a", "right"), Col("b", "right")]
    rows = [["x" * 65, "1" * 6, "2" * 6]]  # 65 + 6 + 6 and padding: 86 columns; without b: 76
    text = _render(fitted_table(columns, rows, width=WIDTH, droppable=("b", "a")))
    assert "1" * 6 in text and "2" * 6 not in text
    _assert_whole(text, ["x" * 65])


CLI_CASES = [
    (["gpus"], ["RTX-PRO-6000-Blackwell", "H200-NVL-141GB"]),
    (["models"], ["meta-llama/Llama-3.3-70B-Instruct", "Qwen/Qwen3-Coder-480B-A35B-Instruct"]),
    (["plan", "deepseek-ai/DeepSeek-R1", "--seq", "32k", "--top", "60"], ["RTX-PRO-6000-Blackwell", "H100-NVL-94GB"]),
    (["plan", "meta-llama/Llama-3.1-8B-Instruct", "--seq", "8k", "--price", "H100=2.49", "--price", "L4=0.8"],
     ["H100-SXM-80GB"]),
    (["sweep", "meta-llama/Llama-3.1-8B-Instruct", "--seq", "1k,2k", "--gpu", "H100", "--gpu", "L4", "--gpu",
      "RTX-PRO-6000-Blackwell"], ["RTX-PRO-6000-Blackwell"]),
    (["sweep", "meta-llama/Llama-3.1-8B-Instruct", "--engine", "vllm", "--seq", "4k,32k", "--batch", "1,16",
      "--dtype", "bf16,fp8", "--gpu", "H100", "--gpu", "RTX-PRO-6000-Blackwell"], ["RTX-PRO-6000-Blackwell"]),
    (["check", str(EXAMPLE_PLAN)], ["meta-llama/Llama-3.3-70B-Instruct", "transformers on 1 x A100-SXM-80GB"]),
]


@pytest.mark.parametrize("args,words", CLI_CASES, ids=[" ".join(a[:2]) for a, _ in CLI_CASES])
def test_cli_tables_at_80_columns(args, words):
    result = runner.invoke(app, args, env={"COLUMNS": str(WIDTH), "NO_COLOR": "1"})
    assert result.exit_code in (0, 1), result.output
    _assert_whole(result.stdout.split("  vllm serve")[0].split("Best:")[0], words)


def test_llamacpp_notes_once_and_the_units_on_their_own_line(tmp_path):
    from test_gguf import llama3_8b

    gguf = llama3_8b(tmp_path)
    result = runner.invoke(app, ["estimate", str(gguf), "-ngl", "20", "--gpu", "L4", "-c", "8k"],
                           env={"COLUMNS": str(WIDTH)})
    assert result.exit_code in (0, 1), result.output
    assert "GiB = 2^30 bytes; GB = 10^9 bytes." in _lines(result.stdout)
    notes = [line for line in _lines(result.stderr) if line.startswith("Note: ")]
    assert notes and len(notes) == len(set(notes))


def test_plan_notes_once_over_several_plans():
    result = runner.invoke(app, ["plan", "meta-llama/Llama-2-7b-hf", "--dtype", "int4", "--gpu", "L4", "--batch",
                                 "1,8"], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    notes = [line for line in _lines(result.stderr) if line.startswith("Note: ")]
    assert sum("pre-quantized checkpoint" in n for n in notes) == 1
