"""Rendering: JSON to stdout for scripts, rich tables for people, messages to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gpuplan.results import EstimateResult
from gpuplan.units import GiB


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=False, emoji=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, emoji=False)


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def json_payload(value: Any) -> Any:
    """What --format json prints for a result, a list of results or catalog entries (also the web API's
    answer): each model's model_dump(), one result as an object, several as a list."""
    if isinstance(value, (list, tuple)):
        return [json_payload(item) for item in value]
    return value.model_dump() if hasattr(value, "model_dump") else value


def estimates_payload(results: Sequence[EstimateResult]) -> Any:
    """One estimate as an object, a grid of them (--batch 1,8 --seq 2k,8k) as a list."""
    return json_payload(results[0] if len(results) == 1 else list(results))


def fmt_gib(n_bytes: int) -> str:
    return f"{n_bytes / GiB:,.2f}"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def _human_params(n: int) -> str:
    for unit, div in (("T", 10**12), ("B", 10**9), ("M", 10**6)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:,}"


def headline(result: EstimateResult) -> str:
    return (f"[bold]{result.model}[/bold] ({result.model_type}, {result.attention}, "
            f"{_human_params(result.parameters)} parameters)")


def workload_line(result: EstimateResult) -> str:
    if result.llamacpp is not None:
        run = result.llamacpp
        seqs = f"{run.n_seq} sequences of {run.n_ctx_seq:,}" if run.n_seq > 1 else "1 sequence"
        output = " + output layer" if run.output_on_gpu else ""
        return (f"{result.dtype} weights · {result.kv_dtype} KV cache · ctx-size {run.n_ctx:,} ({seqs}) · "
                f"{run.layers_on_gpu}/{run.layers} layers{output} on the GPU")
    if result.serving is not None:
        return (f"{result.dtype} weights · {result.kv_dtype} KV cache · max_model_len {result.seq:,} · "
                f"{result.gpus} GPU(s)")
    return (f"{result.dtype} weights · {result.kv_dtype} KV cache · batch {result.batch} x seq {result.seq:,} "
            f"({result.prompt_tokens:,} prompt + {result.new_tokens:,} generated)")


def estimate_table(result: EstimateResult) -> Table:
    """One estimate as a vertical breakdown: component, GiB, exact bytes, share of the total."""
    table = Table(show_edge=False)
    table.add_column("per GPU")
    table.add_column("GiB", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("share", justify="right")
    total = result.total_bytes or 1
    table.add_row("parameters", "", fmt_int(result.parameters), _human_params(result.parameters))
    llamacpp = result.llamacpp is not None
    for label, value in (
        ("weights", result.weights_bytes),
        ("KV cache", result.kv_cache_bytes),
        ("compute buffer" if llamacpp else "activations", result.activation_bytes),
        ("CUDA runtime" if llamacpp else "overhead", result.overhead_bytes),
    ):
        table.add_row(label, fmt_gib(value), fmt_int(value), f"{100 * value / total:.1f}%")
    table.add_section()
    table.add_row("peak allocated", fmt_gib(result.peak_allocated_bytes), fmt_int(result.peak_allocated_bytes), "")
    table.add_row("[bold]total[/bold]", f"[bold]{fmt_gib(result.total_bytes)}[/bold]",
                  f"[bold]{fmt_int(result.total_bytes)}[/bold]", "100.0%")
    if partly_on_host(result) and result.llamacpp is not None:
        host = result.llamacpp.host_bytes
        table.add_row("host (CPU RAM)", fmt_gib(host), fmt_int(host), "")
    return table


def partly_on_host(result: EstimateResult) -> bool:
    """llama.cpp keeps layers, the output layer or the KV cache in host memory."""
    run = result.llamacpp
    if run is None:
        return False
    return run.layers_on_gpu < run.layers or not run.output_on_gpu or run.host_kv_bytes > 0


def sweep_table(results: Sequence[EstimateResult]) -> Table:
    table = Table(show_edge=False, title="GiB per GPU", title_justify="left")
    with_fit = any(r.fits is not None for r in results)
    for col in ("batch", "seq", "weights", "KV cache", "activ.", "overhead", "peak", "total"):
        table.add_column(col, justify="right")
    if with_fit:
        table.add_column("fits")
    for r in results:
        row = [fmt_int(r.batch), fmt_int(r.seq), fmt_gib(r.weights_bytes), fmt_gib(r.kv_cache_bytes),
               fmt_gib(r.activation_bytes), fmt_gib(r.overhead_bytes), fmt_gib(r.peak_allocated_bytes),
               fmt_gib(r.total_bytes)]
        if with_fit:
            row.append("yes" if r.fits else "[red]no[/red]")
        table.add_row(*row)
    return table


def fit_line(result: EstimateResult) -> str | None:
    if result.fits is None or result.gpu_memory_bytes is None:
        return None
    where = f"{result.gpus} x {result.gpu}" if result.gpus > 1 else result.gpu
    usage = f"{fmt_gib(result.total_bytes)} of {fmt_gib(result.gpu_memory_bytes)} GiB per GPU"
    if result.fits:
        return f"{where}: [green]fits[/green] — {usage}, headroom {fmt_gib(result.headroom_bytes or 0)} GiB"
    reason = escape(result.fit_reason or "")
    return f"{where}: [bold red]does not fit[/bold red] — {reason} ({usage})"


def suggestion_lines(result: Any) -> list[str]:
    """What would make a workload that does not fit fit, each with the figure it gives."""
    if not getattr(result, "suggestions", None):
        return []
    lines = ["To fit:"]
    for s in result.suggestions:
        mark = "fits" if s.fits else "still does not fit"
        lines.append(f"  {escape(s.change)} ({escape(s.flag)}): {fmt_gib(s.total_bytes)} of "
                     f"{fmt_gib(s.gpu_memory_bytes)} GiB per GPU, {mark}")
    return lines


# ServingBudget.sampler, as the vLLM knob that picks it (VLLM_USE_FLASHINFER_SAMPLER, --flashinfer-sampler) names it.
_SAMPLER_NAMES = {"flashinfer": "FlashInfer", "sort": "the PyTorch sampler (vocabulary sort)",
                  "in_place": "the PyTorch sampler (in-place Triton top-k/top-p)"}


def serving_lines(result: EstimateResult) -> list[str]:
    s = result.serving
    if s is None:
        return []
    from gpuplan.engines import engine_module

    label = engine_module(s.engine).MEMORY_FRACTION_OPTION
    release = f" {s.engine_version}" if s.engine_version else ""
    lines = [f"{s.engine}{release} on {result.gpu} ({label} {s.memory_fraction:g}, TP {result.tensor_parallel}, PP "
             f"{result.pipeline_parallel}): KV cache {s.kv_cache_tokens:,} tokens, {s.max_concurrency:.2f}x "
             f"requests of {s.max_model_len:,} tokens; longest context that fits {s.max_model_len_that_fits:,}"]
    lines += [f"  {line}" for line in s.log_lines]
    extras = []
    if s.sampler is not None:
        extras.append(f"profile run sampled with {_SAMPLER_NAMES[s.sampler]}")
    if s.max_model_len_auto is not None:
        extras.append(f"--max-model-len auto would pick {s.max_model_len_auto:,}")
    if s.kv_cache_memory_bytes is not None:
        extras.append(f"--kv-cache-memory={s.kv_cache_memory_bytes} gives this pool without profiling")
    if extras:
        lines.append("; ".join(extras))
    return lines


def render_estimates(results: Sequence[EstimateResult], fmt) -> bool:
    """Print results as a table or JSON, notes and warnings on stderr. True when something does not fit."""
    from gpuplan.cli.formats import OutputFormat

    if fmt is OutputFormat.json:
        emit_json(estimates_payload(results))
    else:
        out = stdout_console()
        first = results[0]
        out.print(headline(first))
        if len(results) == 1:
            out.print(workload_line(first))
            out.print(estimate_table(first))
            if first.per_gpu:
                out.print(per_gpu_table(first))
            for line in serving_lines(first):
                out.print(line)
            if (fit := fit_line(first)) is not None:
                out.print(fit)
            for line in suggestion_lines(first):
                out.print(line)
        else:
            out.print(sweep_table(results))
        out.print(assumptions_line(first), style="dim")
        out.print(UNITS_LINE, style="dim")  # a line of its own: the notes on stderr never run into it
    err = stderr_console()
    for note in dict.fromkeys(results[0].notes):
        err.print(f"Note: {note}", style="yellow", markup=False)
    for warning in sorted({w for r in results for w in r.warnings}):
        err.print(f"Warning: {warning}", style="yellow", markup=False)
    return any(r.fits is False for r in results)


UNITS_LINE = "GiB = 2^30 bytes; GB = 10^9 bytes."


def assumptions_line(result: EstimateResult) -> str:
    where = result.source + (f" @ {result.revision}" if result.revision else "")
    if result.llamacpp is not None:
        return (f"Assumed: llama.cpp buffers on one CUDA GPU (see docs/gguf.md); weights as stored in the GGUF "
                f"file ({where}); CUDA runtime as measured on an H200.")
    if result.serving is not None:
        return f"Assumed: {result.engine} startup budget per GPU (see docs/serving.md); config from {where}."
    return (f"Assumed: {result.engine} generate() with {result.attn_implementation} attention, activations in "
            f"{result.compute_dtype}; config from {where}. Peak allocated = what torch.cuda.max_memory_allocated "
            "reads; total adds the CUDA context, libraries and allocator slack.")


def _opt(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "" if value is None else fmt.format(value)


def gpu_table(gpus, *, width: int) -> Table:
    """The catalog at ``width`` columns: the datasheet GB and the throughput columns give way first."""
    columns = [Col("name"), Col("GB", "right"), Col("GiB", "right"), Col("GB/s", "right"), Col("bf16 TF", "right"),
               Col("fp8 TF", "right"), Col("/node", "right"), Col("interconnect", wrap=True)]
    rows = [[g.name, _opt(g.memory_gb, "{:g}"), f"{g.memory_gib:,.2f}" + ("" if g.memory_is_measured else "*"),
             _opt(g.bandwidth_gbps), _opt(g.bf16_tflops, "{:,.1f}"), _opt(g.fp8_tflops, "{:,.1f}"),
             str(g.gpus_per_node), g.interconnect] for g in gpus]
    return fitted_table(columns, rows, width=width, droppable=("GB", "fp8 TF", "bf16 TF", "GB/s"),
                        title=f"{len(gpus)} GPUs: GiB as the driver reports it (* = the binary size of the stated "
                              "memory, no capture found; docs/gpus.md)",
                        title_justify="left")


def models_table(entries, *, width: int | None = None) -> Table:
    """The bundled models with their exact parameter counts: published where the catalog cites one, else
    counted from the bundled config (marked *)."""
    from gpuplan.models.sources import resolve_model

    rows = []
    for e in entries:
        count = f"{e.parameters:,}" if e.parameters else f"{resolve_model(e.id).spec.parameters:,}*"
        aliases = ("\n[dim]  " + ", ".join(e.aliases) + "[/dim]") if e.aliases else ""
        rows.append([e.id + aliases, count])
    # Ids and aliases are single words, so the id column is as wide as the longest and none is ever cut;
    # the aliases wrap between names under their id.
    columns = [Col("id, then its aliases", wrap=True), Col("parameters", "right")]
    return fitted_table(columns, rows, width=width or stdout_console().width,
                        title=f"{len(entries)} bundled models (parameters: * = counted from the config)",
                        title_justify="left")


def probe_table(found) -> Table:
    table = Table(show_edge=False, title_justify="left",
                  title=f"{found.device_count} NVIDIA GPU(s), driver {found.driver_version}, CUDA "
                        f"{found.cuda_driver_version}")
    for col, justify in (("#", "right"), ("name", "left"), ("catalog", "left"), ("total GiB", "right"),
                         ("used GiB", "right"), ("free GiB", "right")):
        table.add_column(col, justify=justify)
    for d in found.devices:
        table.add_row(str(d.index), d.name, d.catalog_name or "(not in catalog)", fmt_gib(d.memory_total_bytes),
                      fmt_gib(d.memory_used_bytes), fmt_gib(d.memory_free_bytes))
    return table


class Col(NamedTuple):
    """A column of a fitted table: its header, alignment, and whether its cells may wrap between words."""

    header: str
    justify: str = "left"
    wrap: bool = False


def fitted_table(columns: Sequence[Col], rows: Sequence[Sequence[str]], *, width: int,
                 droppable: Sequence[str] = (), **table_args: Any) -> Table:
    """A table whose cells are never cut: columns named in ``droppable`` are left out, in that order, until
    the table fits ``width``. Cells of ``wrap`` columns wrap between words (never inside one); the others stay
    on one line, so what does not fit is dropped whole, not truncated."""
    kept = list(range(len(columns)))

    def plain(cell: str) -> str:
        return Text.from_markup(cell).plain if "[" in cell else cell

    def column_width(index: int) -> int:
        """A one-line column is as wide as its widest cell (header included); a wrapping one as its longest
        word."""
        col = columns[index]
        cells = [plain(col.header)] + [plain(row[index]) for row in rows]
        if col.wrap:
            return max(cell_len(word) for cell in cells for word in cell.split() or [""])
        return max(cell_len(line) for cell in cells for line in cell.splitlines() or [""])

    widths = [column_width(index) for index in range(len(columns))]

    def needed() -> int:
        """Columns at their narrowest without a cut, one space of padding each side, one rule between."""
        return sum(widths[index] for index in kept) + 3 * len(kept) - 1

    for name in droppable:
        if needed() <= width:
            break
        kept = [i for i in kept if columns[i].header != name]
    table = Table(show_edge=False, **table_args)
    for index in kept:
        col = columns[index]
        table.add_column(col.header, justify=col.justify, no_wrap=not col.wrap)  # type: ignore[arg-type]
    for row in rows:
        # Cells as Text: rich would parse every string for markup (most of a large table's rendering time).
        table.add_row(*(Text.from_markup(row[index]) if "[" in row[index] else Text(row[index]) for index in kept))
    return table


def table_fits(table: Table, width: int) -> bool:
    """Whether ``table`` renders within ``width`` columns with every cell whole (as fitted_table lays it)."""
    console = Console(width=width, highlight=False, emoji=False)
    with console.capture() as capture:
        console.print(table)
    return all(cell_len(line) <= width and "…" not in line for line in capture.get().splitlines())


def _plan_rows(result, top: int) -> tuple[list[Col], list[list[str]]]:
    priced = any(o.cost_per_hour is not None for o in result.options)
    columns = [Col("GPU"), Col("GPUs", "right"), Col("nodes", "right"), Col("TPxPP", "right"),
               Col("weights", "right"), Col("KV", "right"), Col("total/mem", "right"), Col("KV tokens", "right"),
               Col("fits")]
    if priced:
        columns.insert(1, Col("$/hour", "right"))
    rows = []
    for o in result.options[:top]:
        row = [o.gpu, str(o.count), str(o.nodes), f"{o.tensor_parallel}x{o.pipeline_parallel}",
               f"{o.weights_bytes / GiB:,.1f}", f"{o.kv_cache_bytes / GiB:,.1f}",
               f"{o.total_bytes / GiB:,.1f}/{o.gpu_memory_bytes / GiB:,.1f}",
               f"{o.kv_cache_tokens:,}" if o.kv_cache_tokens is not None else "",
               "yes" if o.fits else "[red]no[/red]"]
        if priced:
            row.insert(1, f"{o.cost_per_hour:,.2f}" if o.cost_per_hour is not None else "-")
        rows.append(row)
    return columns, rows


def render_plans(results: Sequence[Any], fmt, *, top: int = 15) -> None:
    """One plan per (batch, seq) asked for: JSON (an object for one plan, a list for several) or tables."""
    from gpuplan.cli.formats import OutputFormat

    if fmt is OutputFormat.json:
        emit_json(json_payload(results[0] if len(results) == 1 else list(results)))
    else:
        for index, result in enumerate(results):
            if index:
                stdout_console().print()
            _plan_table(result, top=top)
    err = stderr_console()
    for note in dict.fromkeys(n for r in results for n in r.notes):
        err.print(f"Note: {note}", style="yellow", markup=False)
    for result in results:
        if result.best is None:
            err.print(f"Error: {result.model} does not fit on any GPU type tried at batch {result.batch} x "
                      f"{result.seq:,} tokens. Try a smaller --dtype (int4, fp8), --kv-dtype fp8, a shorter --seq, "
                      "or more --max-gpus.", style="red")


def render_plan(result, fmt, *, top: int = 15) -> None:
    render_plans([result], fmt, top=top)


def _plan_table(result, *, top: int) -> None:
    out = stdout_console()
    out.print(f"[bold]{result.model}[/bold] · {result.engine} · {result.dtype} weights, {result.kv_dtype} KV "
              f"cache · {result.batch} x {result.seq:,}-token request(s)")
    columns, rows = _plan_rows(result, top)
    table = fitted_table(columns, rows, width=out.width, droppable=("weights", "KV", "KV tokens", "nodes"),
                         title="per GPU, GiB; best first", title_justify="left")
    out.print(table)
    out.print(f"Ranking: {result.ranking}.", style="dim")
    if len(result.options) > top:
        out.print(f"... {len(result.options) - top} more GPU types (--top, or --format json for all)", style="dim")
    if result.best is not None:
        b = result.best
        split = f"TP {b.tensor_parallel} x PP {b.pipeline_parallel}"
        out.print(f"Best: {b.count} x {b.gpu} ({split}, {b.nodes} node{'s' if b.nodes > 1 else ''}).")
        for line in b.launch:
            out.print(f"  {line}", soft_wrap=True)


def render_verify(comparison, fmt, *, tolerance: float) -> None:
    from gpuplan.cli.formats import OutputFormat

    if fmt is OutputFormat.json:
        payload = comparison.model_dump()
        payload["tolerance"] = tolerance
        payload["within_tolerance"] = not comparison.oom and abs(comparison.error) <= tolerance
        emit_json(payload)
        return
    out = stdout_console()
    est = comparison.estimate
    out.print(headline(est))
    out.print(workload_line(est))
    if comparison.oom:
        at = fmt_gib(comparison.oom_allocated_bytes or 0)
        phase = {"prefill": "running the prompt", "generate": "generating"}.get(comparison.oom_phase or "",
                                                                            comparison.oom_phase)
        where = "in all" if comparison.gpus == 1 else "on the most loaded GPU"
        out.print(f"[bold red]out of memory[/bold red] at {at} GiB while {phase or 'starting'}; the "
                  f"estimate was {fmt_gib(est.total_bytes)} GiB {where} ({fmt_gib(est.peak_allocated_bytes)} GiB of "
                  "torch allocations): the workload does not fit "
                  + ("this GPU." if comparison.gpus == 1 else f"these {comparison.gpus} GPUs."))
        return
    if comparison.per_gpu:
        out.print(split_verify_table(comparison))
        out.print(verdict_line("Peak allocated of the GPU farthest off", comparison.error, tolerance))
        return
    out.print(comparison_table([(label, c.estimated_bytes, c.measured_bytes) for label, c in (
        ("weights", comparison.weights), ("KV cache (after generation)", comparison.kv_cache),
        ("peak allocated (torch)", comparison.peak_allocated), ("peak reserved (allocator)", comparison.peak_reserved),
        ("device used (NVML)", comparison.device_used))]))
    out.print(verdict_line("Peak allocated", comparison.error, tolerance))


def comparison_table(rows: list[tuple[str, int, int]]) -> Table:
    """(component, estimated bytes, measured bytes) rows with the relative error of each."""
    table = Table(show_edge=False)
    for col, justify in (("component", "left"), ("estimate GiB", "right"), ("measured GiB", "right"),
                         ("error", "right")):
        table.add_column(col, justify=justify)
    for label, estimated, measured in rows:
        error = (estimated - measured) / measured if measured else 0.0
        table.add_row(label, fmt_gib(estimated), fmt_gib(measured), f"{error:+.2%}")
    return table


def verdict_line(what: str, error: float, tolerance: float) -> str:
    verdict = "within" if abs(error) <= tolerance else "[bold red]outside[/bold red]"
    return f"{what} is {verdict} the tolerance of {tolerance:.1%} ({error:+.2%})."


def split_verify_table(comparison) -> Table:
    """Per GPU of a model spread with device_map: its layers, then weights, KV cache, peak and device use."""
    table = Table(show_edge=False)
    for col, justify in (("GPU", "left"), ("component", "left"), ("estimate GiB", "right"), ("measured GiB", "right"),
                         ("error", "right")):
        table.add_column(col, justify=justify)
    for position, g in enumerate(comparison.per_gpu):
        if position:
            table.add_section()
        layers = f"{g.estimated_layers} layers" if g.estimated_layers == g.measured_layers else \
            f"{g.estimated_layers} layers (measured {g.measured_layers})"
        rows = [("weights", g.weights), ("KV cache", g.kv_cache), ("peak allocated", g.peak_allocated),
                ("device used", g.device_used)]
        for index, (label, c) in enumerate(r for r in rows if r[1] is not None):
            table.add_row(f"{g.index} · {layers}" if index == 0 else "", label, fmt_gib(c.estimated_bytes),
                          fmt_gib(c.measured_bytes), f"{c.error:+.2%}")
    return table


def train_table(result) -> Table:
    table = Table(show_edge=False)
    table.add_column("component")
    table.add_column("GiB", justify="right")
    for label, value in (("weights", result.weights_bytes), ("gradients", result.gradient_bytes),
                         ("optimizer states", result.optimizer_bytes),
                         ("activations at the peak", result.activation_bytes),
                         ("optimizer step temporaries", result.step_temporary_bytes)):
        table.add_row(label, fmt_gib(value))
    table.add_row("forward peak", fmt_gib(result.forward_peak_bytes))
    table.add_row("backward peak", fmt_gib(result.backward_peak_bytes))
    table.add_row("optimizer step peak", fmt_gib(result.step_peak_bytes))
    table.add_row(f"[bold]peak allocated[/bold] ({result.peak_phase})",
                  f"[bold]{fmt_gib(result.peak_allocated_bytes)}[/bold]")
    table.add_row("overhead (CUDA context, allocator slack)", fmt_gib(result.overhead_bytes))
    table.add_row("[bold]total per GPU[/bold]", f"[bold]{fmt_gib(result.total_bytes)}[/bold]")
    return table


def train_setup_line(result) -> str:
    parts = [result.method, result.precision, result.optimizer]
    if result.method != "full":
        targets = ",".join(result.lora_targets) if result.lora_targets else "all-linear"
        parts.append(f"rank {result.lora_rank} on {targets}")
    if result.grad_checkpointing:
        parts.append("gradient checkpointing")
    parts.append(f"micro-batch {result.batch} x seq {result.seq:,}")
    if result.grad_accumulation > 1:
        parts.append(f"{result.grad_accumulation} accumulation steps")
    if result.zero:
        parts.append(f"ZeRO-{result.zero} over {result.gpus} GPUs")
    elif result.fsdp:
        parts.append(f"FSDP over {result.gpus} GPUs")
    elif result.gpus > 1:
        parts.append(f"DDP over {result.gpus} GPUs")
    if result.offload_optimizer:
        parts.append("optimizer offloaded")
    return " · ".join(parts)


def render_train(result, fmt) -> None:
    from gpuplan.cli.formats import OutputFormat

    if fmt is OutputFormat.json:
        emit_json(json_payload(result))
        return
    out = stdout_console()
    out.print(f"[bold]{result.model}[/bold] ({result.model_type}, {_human_params(result.parameters)} parameters, "
              f"{_human_params(result.trainable_parameters)} trainable)")
    out.print(train_setup_line(result))
    out.print(train_table(result))
    if result.fits is not None:
        usage = f"{fmt_gib(result.total_bytes)} of {fmt_gib(result.gpu_memory_bytes or 0)} GiB per GPU"
        if result.fits:
            out.print(f"[green]fits[/green] on {result.gpu} ({usage}, headroom {fmt_gib(result.headroom_bytes or 0)} "
                      "GiB)")
        else:
            out.print(f"[bold red]does not fit[/bold red] on {result.gpu}: needs {usage}")
        for line in suggestion_lines(result):
            out.print(line)
    err = stderr_console()
    for note in dict.fromkeys(result.notes):
        err.print(f"Note: {note}", style="yellow", markup=False)
    for warning in result.warnings:
        err.print(f"Warning: {warning}", style="yellow", markup=False)


def render_train_verify(comparison: dict, fmt, *, tolerance: float) -> None:
    from gpuplan.cli.formats import OutputFormat

    within = not comparison["oom"] and abs(comparison["error"]) <= tolerance
    if fmt is OutputFormat.json:
        emit_json({**comparison, "tolerance": tolerance, "within_tolerance": within})
        return
    out = stdout_console()
    est = comparison["estimate"]
    out.print(f"[bold]{est['model']}[/bold] ({est['model_type']}): one training step")
    if comparison["oom"]:
        out.print(f"[bold red]out of memory[/bold red] at {fmt_gib(comparison.get('oom_allocated_bytes') or 0)} GiB; "
                  f"the estimate was {fmt_gib(est['peak_allocated_bytes'])} GiB of torch allocations.")
        return
    out.print(comparison_table([(row["component"], row["estimated_bytes"], row["measured_bytes"])
                                for row in comparison["components"]]))
    out.print(verdict_line("Peak allocated", comparison["error"], tolerance))


def per_gpu_table(result: EstimateResult) -> Table:
    table = Table(show_edge=False, title=f"{len(result.per_gpu or [])} GPUs, whole layers each (device_map='auto'); "
                                         "GiB", title_justify="left")
    for col in ("GPU", "layers", "weights", "KV cache", "activations", "peak", "total"):
        table.add_column(col, justify="right")
    for g in result.per_gpu or []:
        span = f"{g.first_layer}-{g.first_layer + g.layers - 1}" if g.layers else "-"
        table.add_row(str(g.index), span, fmt_gib(g.weights_bytes), fmt_gib(g.kv_cache_bytes),
                      fmt_gib(g.activation_bytes), fmt_gib(g.peak_allocated_bytes), fmt_gib(g.total_bytes))
    return table
