"""Rendering: JSON to stdout for scripts, rich tables for people, messages to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
    err = stderr_console()
    for note in results[0].notes:
        err.print(f"Note: {note}", style="yellow")
    for warning in sorted({w for r in results for w in r.warnings}):
        err.print(f"Warning: {warning}", style="yellow")
    return any(r.fits is False for r in results)


def assumptions_line(result: EstimateResult) -> str:
    where = result.source + (f" @ {result.revision}" if result.revision else "")
    if result.llamacpp is not None:
        return (f"Assumed: llama.cpp buffers on one CUDA GPU (see docs/gguf.md); weights as stored in the GGUF "
                f"file ({where}); CUDA runtime as measured on an H200. GiB = 2^30 bytes.")
    if result.serving is not None:
        return (f"Assumed: {result.engine} startup budget per GPU (see docs/serving.md); config from {where}. "
                "GiB = 2^30 bytes.")
    return (f"Assumed: {result.engine} generate() with {result.attn_implementation} attention, activations in "
            f"{result.compute_dtype}; config from {where}. GiB = 2^30 bytes; peak allocated = what "
            "torch.cuda.max_memory_allocated reads; total adds the CUDA context, libraries and allocator slack.")


def _opt(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "" if value is None else fmt.format(value)


def gpu_table(gpus) -> Table:
    table = Table(show_edge=False, title=f"{len(gpus)} GPUs (memory: marketed GB, and GiB as the driver reports "
                                        "it; * = marketed size, no driver figure found)", title_justify="left")
    table.add_column("name", no_wrap=True)
    for col in ("GB", "GiB", "GB/s", "bf16 TF", "fp8 TF"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("interconnect", ratio=1)
    table.add_column("/node", justify="right")
    for g in gpus:
        table.add_row(g.name, _opt(g.memory_gb, "{:g}"),
                      f"{g.memory_gib:,.2f}" + ("" if g.memory_is_measured else "*"),
                      _opt(g.bandwidth_gbps), _opt(g.bf16_tflops, "{:,.1f}"), _opt(g.fp8_tflops, "{:,.1f}"),
                      g.interconnect, str(g.gpus_per_node))
    return table


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


def render_plan(result, fmt, *, top: int = 15) -> None:
    from gpuplan.cli.formats import OutputFormat

    if fmt is OutputFormat.json:
        emit_json(json_payload(result))
    else:
        out = stdout_console()
        out.print(f"[bold]{result.model}[/bold] · {result.engine} · {result.dtype} weights, {result.kv_dtype} KV "
                  f"cache · {result.batch} x {result.seq:,}-token request(s)")
        table = Table(show_edge=False, title="per GPU, GiB; best first", title_justify="left")
        table.add_column("GPU", no_wrap=True)
        for col in ("GPUs", "TPxPP", "weights", "KV", "total/mem", "KV tokens", "fits"):
            table.add_column(col, justify="right", no_wrap=True)
        for o in result.options[:top]:
            table.add_row(o.gpu, str(o.count), f"{o.tensor_parallel}x{o.pipeline_parallel}",
                          f"{o.weights_bytes / GiB:,.1f}", f"{o.kv_cache_bytes / GiB:,.1f}",
                          f"{o.total_bytes / GiB:,.1f}/{o.gpu_memory_bytes / GiB:,.1f}",
                          f"{o.kv_cache_tokens:,}" if o.kv_cache_tokens is not None else "",
                          "yes" if o.fits else "[red]no[/red]")
        out.print(table)
        if len(result.options) > top:
            out.print(f"... {len(result.options) - top} more GPU types (--top, or --format json for all)", style="dim")
        if result.best is not None:
            b = result.best
            split = f"TP {b.tensor_parallel} x PP {b.pipeline_parallel}"
            out.print(f"Best: {b.count} x {b.gpu} ({split}, {b.nodes} node{'s' if b.nodes > 1 else ''}).")
            for line in b.launch:
                out.print(f"  {line}", soft_wrap=True)
    err = stderr_console()
    for note in result.notes:
        err.print(f"Note: {note}", style="yellow")
    if result.best is None:
        err.print(f"Error: {result.model} does not fit on any GPU type tried. Try a smaller --dtype (int4, fp8), "
                  "--kv-dtype fp8, a shorter --seq, or more --max-gpus.", style="red")


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
    for note in result.notes:
        err.print(f"Note: {note}", style="yellow")
    for warning in result.warnings:
        err.print(f"Warning: {warning}", style="yellow")


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
