"""`gpuplan sweep MODEL`: a grid of estimates as a table, CSV, JSON or a chart.

Only typer is imported at the top: the command is registered on every start of the CLI.
"""


import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

# Fewer points than this finish before a progress bar would be worth drawing.
PROGRESS_MIN_POINTS = 50


class SweepFormat(str, Enum):
    table = "table"
    json = "json"


def sweep(
    model: Annotated[str, typer.Argument(
        help="Hugging Face id, bundled alias, modelscope:owner/name, or a local folder / config.json / .gguf "
             "file.", show_default=False)],
    seq: Annotated[str | None, typer.Option(
        "--seq", "-s", help="Context lengths: a list (2k,8k) or a doubling range (1k..128k). Default: 1k up "
                            "to the model's context. Serving engines: max_model_len.", show_default=False)] = None,
    batch: Annotated[str, typer.Option(
        "--batch", "-b", help="Batch sizes: a list (1,8,32) or a doubling range (1..64). Serving engines: "
                              "concurrent requests; llama.cpp: --parallel.")] = "1",
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Weight dtypes, a list: auto, fp16, bf16, fp8, int8, int4, nf4.")] = "auto",
    kv_dtype: Annotated[str, typer.Option(
        "--kv-dtype", "--kv-cache-dtype", help="KV cache dtypes, a list: auto, fp16, bf16, fp8.")] = "auto",
    gpu: Annotated[list[str] | None, typer.Option(
        "--gpu", help="GPU to check every point against; repeat for several.", metavar="<name>",
        show_default=False)] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="transformers, vllm, sglang or llama.cpp (default: llama.cpp for a .gguf file, else "
                         "transformers). Serving engines need --gpu.", show_default=False)] = None,
    tensor_parallel_size: Annotated[int, typer.Option(
        "--tensor-parallel-size", "-tp", help="Tensor parallel GPUs (serving engines).")] = 1,
    pipeline_parallel_size: Annotated[int, typer.Option(
        "--pipeline-parallel-size", "-pp", help="Pipeline parallel stages (serving engines).")] = 1,
    new_tokens: Annotated[int, typer.Option(
        "--new-tokens", help="transformers: how many of the seq tokens are generated.")] = 0,
    csv_file: Annotated[Path | None, typer.Option(
        "--csv", help="Also write the points as CSV (bytes as integers) to this file.", show_default=False)] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Also draw the memory against context length to this .png, .svg or .pdf (needs "
                       "matplotlib: pip install 'gpuplan[plot]').", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bar (it shows on a terminal for sweeps of 50 points or more).")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.",
                                                 show_default=False)] = None,
    source: Annotated[str, typer.Option(
        "--source", help="Where to read the config: auto, local, catalog, hub or modelscope.")] = "auto",
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never use the network (also HF_HUB_OFFLINE=1).")] = False,
    output_format: Annotated[SweepFormat, typer.Option(
        "--format", "-f", case_sensitive=False, help="table for people, json for scripts.")] = SweepFormat.table,
    engine_flags: dict | None = None,
) -> None:
    """Memory over a grid of context lengths, batch sizes, dtypes and GPUs: table, CSV, JSON or a chart."""
    from gpuplan.cli.errors import run_guarded

    def run() -> int:
        from gpuplan.cli import output
        from gpuplan.engines import SERVING_ENGINES
        from gpuplan.errors import InputError
        from gpuplan.sweeps import sweep as run_sweep
        from gpuplan.sweeps import to_csv

        if engine is not None:
            from gpuplan.cli.engine_flags import engine_options
            from gpuplan.engines import engine_name

            engine_options(engine_name(engine), engine_flags or {})  # flags named as typed, before any work
        if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise InputError(f"--plot {plot}: the file must end in .png, .svg or .pdf")
        err = output.stderr_console()
        show_progress = not quiet and sys.stderr.isatty()
        with _Progress(err, enabled=show_progress) as progress:
            result = run_sweep(model, seq=seq, batch=batch, dtype=dtype, kv_dtype=kv_dtype, gpu=gpu,
                               engine=engine.strip().lower() if engine else None,
                               tensor_parallel=tensor_parallel_size, pipeline_parallel=pipeline_parallel_size,
                               new_tokens=new_tokens, revision=revision, source=source, offline=offline or None,
                               progress=progress.update, **(engine_flags or {}))
        if csv_file is not None:
            _write_text(csv_file, to_csv(result), option="--csv")
        if output_format is SweepFormat.json:
            output.emit_json(output.json_payload(result))
        else:
            out = output.stdout_console()
            for table in sweep_tables(result, width=out.width):
                out.print(table)
        if plot is not None:
            from gpuplan.errors import MissingDependencyError
            from gpuplan.sweeps import save_plot

            try:
                save_plot(result, plot)
            except MissingDependencyError as exc:
                err.print(f"Warning: {exc.message} ({exc.hint}). No file was written; a terminal chart "
                          "instead:", style="yellow", markup=False)
                err.print(terminal_chart(result))
            else:
                if not quiet:
                    err.print(f"Wrote {plot}", style="dim")
        for note in result.notes:
            err.print(f"Note: {note}", style="yellow", markup=False)
        if result.engine not in SERVING_ENGINES:  # a serving engine's warnings say what the table does
            for warning in sorted({w for p in result.points for w in p.warnings}):
                err.print(f"Warning: {warning}", style="yellow", markup=False)
        return 0  # a sweep explores past the limits on purpose: points that do not fit are its data

    run_guarded(run)


def _write_text(path: Path, text: str, *, option: str) -> None:
    from gpuplan.errors import InputError

    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {option} {path}: {exc.strerror or exc}") from None


class _Progress:
    """A rich progress bar on stderr, drawn only for sweeps long enough to need one."""

    def __init__(self, console, *, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.bar = None
        self.task = None

    def __enter__(self) -> "_Progress":
        return self

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total < PROGRESS_MIN_POINTS:
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("sweep", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def sweep_tables(result, width: int = 10_000) -> list:
    """The sweep for people, at ``width`` columns with no cell cut. transformers and llama.cpp: a row per
    dtype, batch and seq with a fit column per GPU (one "fits on" column naming them when those do not fit).
    Serving engines allocate a fixed budget per GPU whatever the context, so a budget table per dtype and
    GPU, then the requests that fit per max_model_len with one fit column per batch."""
    from rich.text import Text

    from gpuplan.engines import SERVING_ENGINES

    several = len({(p.dtype, p.kv_dtype) for p in result.points}) > 1
    serving = result.engine in SERVING_ENGINES
    split = f", TP {result.tensor_parallel} x PP {result.pipeline_parallel}" if serving else ""
    heading = Text.assemble((result.model, "bold"), f" · {result.engine}{split}")
    if not several:
        heading.append(f" · {result.dtypes[0]} weights, {result.kv_dtypes[0]} KV cache")
    if not serving:
        return [heading, _generate_table(result, several, width)]
    return [heading, *_serving_tables(result, several, width)]


def _generate_table(result, several: bool, width: int):
    from gpuplan.cli.output import Col, fitted_table, fmt_gib, table_fits

    gpu_names = [g.name for g in result.gpus]
    rows: dict[tuple, list] = {}
    fits_on: dict[tuple, list[str]] = {}
    for p in result.points:
        key = (p.dtype, p.kv_dtype, p.batch, p.seq)
        if key not in rows:
            rows[key] = ([f"{p.dtype}/{p.kv_dtype}"] if several else []) + [
                f"{p.batch:,}", f"{p.seq:,}", fmt_gib(p.weights_bytes), fmt_gib(p.kv_cache_bytes),
                fmt_gib(p.activation_bytes), fmt_gib(p.overhead_bytes), fmt_gib(p.total_bytes)] + [""] * len(gpu_names)
            fits_on[key] = []
        if p.gpu is not None:
            rows[key][len(rows[key]) - len(gpu_names) + gpu_names.index(p.gpu)] = _fit(p.fits)
            if p.fits:
                fits_on[key].append(p.gpu)
    columns = ([Col("dtype/KV")] if several else []) + [
        Col(c, "right") for c in ("batch", "seq", "weights", "KV cache", "activ.", "overhead", "total")]
    args = {"title": "GiB per GPU", "title_justify": "left"}
    table = fitted_table(columns + [Col(n) for n in gpu_names], list(rows.values()), width=width,
                         droppable=("activ.", "overhead", "weights"), **args)
    if table_fits(table, width) or not gpu_names:
        return table
    # Too many GPUs side by side: one column names those each row fits on, wrapped between names.
    merged = [row[:len(columns)] + [", ".join(fits_on[key]) or "[red]none[/red]"] for key, row in rows.items()]
    return fitted_table(columns + [Col("fits on", wrap=True)], merged, width=width,
                        droppable=("activ.", "overhead", "weights"), **args)


def _serving_tables(result, several: bool, width: int) -> list:
    from gpuplan.cli.output import Col, fitted_table, fmt_gib

    head_columns = ([Col("dtype/KV")] if several else []) + [Col("GPU")]
    batches = list(result.batches)
    budget_rows: dict[tuple, list] = {}
    fit_rows: dict[tuple, list] = {}
    for p in result.points:
        head = ([f"{p.dtype}/{p.kv_dtype}"] if several else []) + [p.gpu or ""]
        bkey = (p.dtype, p.kv_dtype, p.gpu)
        budget_rows.setdefault(bkey, head + [
            fmt_gib(p.weights_bytes), fmt_gib(p.kv_cache_bytes), fmt_gib(p.activation_bytes),
            fmt_gib(p.overhead_bytes), fmt_gib(p.total_bytes),
            f"{p.kv_cache_tokens:,}" if p.kv_cache_tokens is not None else ""])
        fkey = (p.dtype, p.kv_dtype, p.gpu, p.seq)
        row = fit_rows.setdefault(fkey, head + [f"{p.seq:,}", f"{p.max_concurrency:,.2f}"
                                                if p.max_concurrency is not None else ""] + [""] * len(batches))
        row[len(row) - len(batches) + batches.index(p.batch)] = _fit(p.fits)
    budget = fitted_table(head_columns + [Col(c, "right") for c in ("weights", "KV cache", "activ.", "overhead",
                                                                     "total", "KV tokens")],
                          list(budget_rows.values()), width=width, droppable=("activ.", "overhead"),
                          title="startup budget, GiB per GPU", title_justify="left")
    fits = fitted_table(head_columns + [Col("context", "right"), Col("requests", "right")]
                        + [Col(f"batch {b}") for b in batches], list(fit_rows.values()), width=width,
                        title="requests of one context (max_model_len) that fit; batch N: do N fit",
                        title_justify="left")
    return [budget, fits]


def _fit(fits: bool | None) -> str:
    return "" if fits is None else "yes" if fits else "[red]no[/red]"


def terminal_chart(result, width: int = 48):
    """The sweep as bars in the terminal, for when matplotlib is missing: a block per panel of the chart,
    a bar per context length, one character (and colour) per component, ┆ where each GPU's memory ends."""
    from rich.text import Text

    from gpuplan.sweeps import COMPONENTS, panels, token_label
    from gpuplan.units import GiB

    chars = {"weights_bytes": "█", "kv_cache_bytes": "▓", "activation_bytes": "▒", "overhead_bytes": "░"}
    groups = panels(result)
    scale = max([p.total_bytes for _, pts, _ in groups for p in pts] + [g.memory_bytes for g in result.gpus] + [1])

    def cell(n_bytes: float) -> int:
        return round(n_bytes / scale * width)

    text = Text()
    text.append("GiB per GPU: ")
    for field, label, colour in COMPONENTS:
        text.append(chars[field] * 2, style=colour)
        text.append(f" {label}  ")
    if result.gpus:
        text.append("┆ GPU memory")
    text.append("\n")
    label_width = max(len(token_label(p.seq)) for _, pts, _ in groups for p in pts)
    from gpuplan.engines import SERVING_ENGINES

    serving = result.engine in SERVING_ENGINES
    for title, pts, gpus in groups:
        marks = {cell(g.memory_bytes) for g in gpus}
        text.append(f"\n{title}\n", style="bold")
        for p in pts:
            text.append(f"  {token_label(p.seq):>{label_width}} │")
            # Cumulative rounding: the bar's length is the total's, whatever the parts round to.
            done, cumulative = 0, 0
            for field, _label, colour in COMPONENTS:
                cumulative += getattr(p, field)
                end = cell(cumulative)
                text.append(chars[field] * (end - done), style=colour)
                done = end
            text.append("".join("┆" if i in marks else " " for i in range(done + 1, width + 2)), style="dim")
            text.append(f" {p.total_bytes / GiB:,.1f}")
            if gpus:
                fits = ([p.gpu] if p.fits else []) if serving else [
                    g.name for g in gpus if p.total_bytes <= g.memory_bytes]
                text.append(f"  fits: {', '.join(f for f in fits if f) or 'none'}", style="" if fits else "red")
            if serving and p.max_concurrency is not None:
                text.append(f"  {p.max_concurrency:,.2f} requests")
            text.append("\n")
    for g in result.gpus:
        text.append(f"┆ at {g.name}: {g.memory_bytes / GiB:,.1f} GiB\n", style="dim")
    return text
