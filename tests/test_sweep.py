"""`gpuplan sweep` and gpuplan.sweep(): grids, tables, CSV, JSON, charts and the terminal fallback."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

import gpuplan
from gpuplan.cli.app import app
from gpuplan.cli.sweep_cmd import _Progress, terminal_chart
from gpuplan.errors import InputError, MissingDependencyError
from gpuplan.results import SCHEMA_VERSION
from gpuplan.sweeps import CSV_COLUMNS, parse_grid, save_plot, to_csv, token_label

runner = CliRunner()
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize("text,expected", [
    ("1k..128k", [1024 * 2**i for i in range(8)]),
    ("1k..100k", [1024, 2048, 4096, 8192, 16384, 32768, 65536, 102400]),
    ("1,8,32", [1, 8, 32]),
    ("1..8,12,8", [1, 2, 4, 8, 12]),
    ("4k", [4096]),
    (" 2k , 8k ", [2048, 8192]),
])
def test_parse_grid(text, expected):
    assert parse_grid(text, option="--seq") == expected


def test_parse_grid_lists_and_ints():
    assert parse_grid([1, "4k..8k"], option="--seq") == [1, 4096, 8192]
    assert parse_grid(8, option="--batch") == [8]


@pytest.mark.parametrize("text,message", [
    ("8k..1k", "ends before it starts"),
    ("a..b", "cannot read the range"),
    ("1,,2", "has an empty item"),
    ("eight", "expects whole numbers or a range"),
    ("0", "must be at least 1"),
    ("0..4", "must start at 1 or more"),
])
def test_parse_grid_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_grid(text, option="--seq")


def test_token_label():
    assert [token_label(n) for n in (4096, 131072, 1048576, 3000, 1536)] == ["4k", "128k", "1m", "3,000", "1,536"]


def test_sweep_points_in_order_with_fits_per_gpu():
    s = gpuplan.sweep(MODEL, seq="1k..4k", batch="1,8", gpu=["H100", "L4"], dtype="bf16,int4")
    assert s.schema_version == SCHEMA_VERSION and s.engine == "transformers"
    assert s.dtypes == ["bf16", "int4-gptq"] and s.kv_dtypes == ["bf16"]
    assert s.seqs == [1024, 2048, 4096] and s.batches == [1, 8]
    assert [g.name for g in s.gpus] == ["H100-SXM-80GB", "L4"]
    assert len(s.points) == 2 * 2 * 2 * 3
    assert [(p.dtype, p.gpu, p.batch, p.seq) for p in s.points[:4]] == [
        ("bf16", "H100-SXM-80GB", 1, 1024), ("bf16", "H100-SXM-80GB", 1, 2048), ("bf16", "H100-SXM-80GB", 1, 4096),
        ("bf16", "H100-SXM-80GB", 8, 1024)]
    one = gpuplan.estimate(MODEL, dtype="bf16", batch=8, seq=4096, gpu="L4")
    point = next(p for p in s.points if (p.dtype, p.gpu, p.batch, p.seq) == ("bf16", "L4", 8, 4096))
    assert point.total_bytes == one.total_bytes and point.fits == one.fits is False


def test_sweep_defaults_to_the_models_context():
    s = gpuplan.sweep("llama-2-7b")  # 4,096 positions in its config
    assert s.seqs == [1024, 2048, 4096] and s.gpus == [] and all(p.fits is None for p in s.points)


def test_dtypes_that_resolve_alike_are_swept_once():
    s = gpuplan.sweep(MODEL, seq="1k", dtype="auto,bf16")
    assert s.dtypes == ["bf16"] and len(s.points) == 1
    assert any("already swept" in n for n in s.notes)


def test_serving_sweep():
    s = gpuplan.sweep(MODEL, seq="8k,32k", batch=[1, 8], gpu="L4", engine="vllm")
    by = {(p.batch, p.seq): p for p in s.points}
    assert by[1, 8192].kv_cache_tokens == by[8, 32768].kv_cache_tokens  # one budget per GPU
    assert by[1, 32768].fits and not by[8, 32768].fits
    assert by[1, 8192].max_concurrency == pytest.approx(4 * by[1, 32768].max_concurrency)


def test_serving_sweep_needs_a_gpu():
    with pytest.raises(InputError, match="at batch 1, seq 8,192: --engine vllm sizes its KV cache"):
        gpuplan.sweep(MODEL, seq="8k", engine="vllm")


def test_llamacpp_sweep_maps_batch_to_parallel(tmp_path):
    from test_gguf import llama3_8b

    s = gpuplan.sweep(str(llama3_8b(tmp_path)), seq="4k,8k", batch=[1, 4], gpu="RTX 4090")
    assert s.engine == "llama.cpp" and s.dtypes == ["Q4_0"]
    by = {(p.batch, p.seq): p for p in s.points}
    # Meta-Llama-3-8B: 32 layers x 8 KV heads x 128 x (K + V) x f16 = 128 KiB per token.
    assert by[4, 4096].kv_cache_bytes == 4 * 4096 * 128 * 1024 == 2 * by[1, 8192].kv_cache_bytes


def test_gpuplan_sweep_is_the_function_even_after_importing_its_module():
    import gpuplan.sweeps as module

    assert gpuplan.sweep is module.sweep
    assert gpuplan.sweep("gpt2", seq="1k").points[0].seq == 1024


def test_csv_columns_and_values():
    s = gpuplan.sweep(MODEL, seq="1k,2k", gpu="L4")
    rows = list(csv.DictReader(io.StringIO(to_csv(s))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2
    assert rows[0]["fits"] == "true" and rows[0]["kv_cache_tokens"] == ""
    assert int(rows[1]["total_bytes"]) == s.points[1].total_bytes


# ---- the command ------------------------------------------------------------------------------------


def test_sweep_table_csv_and_json(tmp_path):
    target = tmp_path / "s.csv"
    result = runner.invoke(app, ["sweep", MODEL, "--seq", "1k..4k", "--batch", "1,8", "--gpu", "H100", "--gpu", "L4",
                                 "--csv", str(target)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "│" in line]
    assert len(rows) == 6 and "H100-SXM-80GB" in result.stdout.splitlines()[2]
    assert len(target.read_text().splitlines()) == 1 + 2 * 2 * 3
    data = json.loads(runner.invoke(app, ["sweep", MODEL, "-s", "1k", "-f", "json"]).stdout)
    assert data["schema_version"] == SCHEMA_VERSION and data["points"][0]["seq"] == 1024


def test_sweep_serving_tables():
    result = runner.invoke(app, ["sweep", MODEL, "--seq", "8k,32k", "--batch", "1,8", "--gpu", "L4",
                                 "--engine", "vllm"])
    assert result.exit_code == 0, result.output
    assert "startup budget, GiB per GPU" in result.stdout and "batch 8" in result.stdout
    assert "Warning" not in result.stderr  # the table says what fits


def test_sweep_bad_input():
    for args, message in ((["--seq", "8k..1k"], "ends before it starts"), (["--plot", "x.gif"], ".png, .svg or .pdf"),
                          (["--gpu", "H1000"], "unknown GPU")):
        result = runner.invoke(app, ["sweep", MODEL, *args])
        assert result.exit_code == 2 and message in result.stderr and result.stdout == ""


def test_plot_files(tmp_path):
    pytest.importorskip("matplotlib")
    png, svg = tmp_path / "s.png", tmp_path / "s.svg"
    result = runner.invoke(app, ["sweep", MODEL, "--seq", "1k..8k", "--batch", "1,8", "--gpu", "L4",
                                 "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_plot(gpuplan.sweep(MODEL, seq="8k", gpu=["L4", "H100"], engine="vllm", dtype="bf16,fp8"), svg)
    assert "<svg" in svg.read_text()[:400]


def test_without_matplotlib_a_message_and_a_terminal_chart(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    target = tmp_path / "s.png"
    with pytest.raises(MissingDependencyError):
        save_plot(gpuplan.sweep(MODEL, seq="1k"), target)
    result = runner.invoke(app, ["sweep", MODEL, "--seq", "1k,2k", "--gpu", "L4", "--plot", str(target),
                                 "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["points"]  # stdout stays JSON
    assert "--plot needs matplotlib (pip install 'gpuplan[plot]')" in result.stderr
    assert "█" in result.stderr and "fits: L4" in result.stderr and not target.exists()


def test_terminal_chart_marks_gpu_memory():
    s = gpuplan.sweep(MODEL, seq="1k,32k", batch=[1, 8], gpu=["H100", "L4"])
    console = Console(file=io.StringIO(), width=120, no_color=True)
    console.print(terminal_chart(s))
    text = console.file.getvalue()
    assert "batch 8" in text and "┆ at L4: 22.5 GiB" in text and "fits: none" in text


def test_progress_bar_draws_only_when_asked():
    out = io.StringIO()
    progress = _Progress(Console(file=out, force_terminal=True, width=80), enabled=True)
    with progress:
        progress.update(1, 10)  # too short to need a bar
        assert progress.bar is None
        for done in range(1, 61):
            progress.update(done, 60)
        assert progress.bar is not None
    quiet = _Progress(Console(file=io.StringIO()), enabled=False)
    quiet.update(1, 1000)
    assert quiet.bar is None


def test_a_grouped_number_is_one_context_length_not_a_list():
    s = gpuplan.sweep(MODEL, seq="32,768")
    assert s.seqs == [32768]
    assert gpuplan.sweep(MODEL, seq="1k,2k").seqs == [1024, 2048]
