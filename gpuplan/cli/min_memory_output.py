"""Rendering of ``gpuplan verify --min-memory``: the smallest GPU memory the search found, beside the estimate."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from gpuplan.cli.output import emit_json, fmt_gib, stdout_console


def render_min_memory(record: dict[str, Any], fmt: Any, *, tolerance: float) -> None:
    if getattr(fmt, "value", fmt) == "json":
        emit_json(record)
        return
    console = stdout_console()
    console.print(f"[bold]{record['case_id']}[/bold] on {record.get('gpu_name')} · {record['allocator']} allocator")
    if record.get("oom"):
        console.print(f"out of memory without a cap: the workload does not fit this GPU; the estimate was "
                      f"{fmt_gib(record['estimate_total_bytes'])} GiB")
        return
    table = Table(show_edge=False)
    table.add_column("figure")
    table.add_column("estimate GiB", justify="right")
    table.add_column("measured GiB", justify="right")
    table.add_column("error", justify="right")
    table.add_row("smallest GPU that runs it", fmt_gib(record["estimate_total_bytes"]),
                  fmt_gib(record["min_gpu_bytes"]), f"{record['error']:+.2%}")
    table.add_row("  allocator cap", "", fmt_gib(record["min_cap"]), "")
    table.add_row("  memory outside torch", "", fmt_gib(record["outside_torch"]), "")
    table.add_row("peak allocated (torch)", fmt_gib(record["estimate_peak_allocated_bytes"]),
                  fmt_gib(record["peak_allocated"]), "")
    table.add_row("peak reserved, no cap", "", fmt_gib(record["peak_reserved"]), "")
    console.print(table)
    runs = len(record["attempts"])
    console.print(f"{runs} capped run{'s' if runs != 1 else ''}, {record['search_step'] // 2**20} MiB steps, "
                  "between the peak allocated and the peak reserved.")
    verdict = "within" if abs(record["error"]) <= tolerance else "outside"
    console.print(f"The estimate is {verdict} the tolerance of {tolerance:.1%} ({record['error']:+.2%}).")
