"""`gpuplan check FILE`: every deployment of a plan file against its GPUs, for CI.

Only typer is imported here: the command is registered on every start of the CLI, and the plan file
machinery (pydantic models, YAML, the calculator) loads when the command runs.
"""


import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class CheckFormat(str, Enum):
    table = "table"
    json = "json"
    github = "github"


def check(
    file: Annotated[Path, typer.Argument(
        help="Plan file (YAML): defaults: and a deployments: list; see docs/ci.md.", show_default=False)],
    output_format: Annotated[CheckFormat, typer.Option(
        "--format", "-f", case_sensitive=False,
        help="table for people, json for scripts, github for GitHub Actions annotations on the plan file's "
             "lines.")] = CheckFormat.table,
    junit: Annotated[Path | None, typer.Option(
        "--junit", help="Also write a JUnit XML report here: one test case per deployment.",
        show_default=False)] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never use the network (also HF_HUB_OFFLINE=1): bundled catalog and Hub cache "
                          "only.")] = False,
) -> None:
    """Check every deployment of a plan file: exit 0 when all fit, 1 when any does not, 2 for a bad file."""
    from gpuplan.cli.errors import run_guarded

    def run() -> int:
        from gpuplan.cli import report
        from gpuplan.errors import EXIT_FINDING, GpuplanError
        from gpuplan.planfile import check as check_plan

        try:
            result = check_plan(file, offline=offline or None)
        except GpuplanError as exc:
            issues = getattr(exc, "issues", None)
            if output_format is CheckFormat.github and issues:
                for line in report.issue_lines(issues):
                    print(line)
            if junit is not None:
                report.write_junit_error(str(file), exc.message, junit)
            raise
        if junit is not None:
            report.write_junit(result, junit)
        render(result, output_format)
        return 0 if result.passed else EXIT_FINDING

    run_guarded(run)


def render(result, fmt: CheckFormat) -> None:
    from gpuplan.cli import output, report

    if fmt is CheckFormat.json:
        output.emit_json(output.json_payload(result))
        return
    if fmt is CheckFormat.github:
        for line in report.github_lines(result):
            print(line)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(report.step_summary(result))
        return
    from rich.markup import escape

    from gpuplan.engines import budgets_whole_gpu
    from gpuplan.units import GiB

    out = output.stdout_console()
    # The deployment, its model id and where it runs stack in one column whose words never break: ids are
    # what people copy, so they are never cut; the figures stay on one line each.
    columns = [output.Col("deployment, model, engine on GPUs", wrap=True), output.Col("used/GPU", "right"),
               output.Col("free/need", "right"), output.Col("req./need", "right"), output.Col("result")]
    rows = []
    for c in result.deployments:
        conc = f"{c.max_concurrency:.2f}/{c.min_concurrency:g}" if c.max_concurrency is not None else ""
        rows.append([f"[bold]{escape(c.name)}[/bold]\n[dim]{escape(c.model)}\n{c.engine} on {c.gpus} x {c.gpu}[/dim]",
                     f"{c.total_bytes / GiB:,.1f}/{c.gpu_memory_bytes / GiB:,.1f}",
                     "" if budgets_whole_gpu(c.engine)
                     else f"{c.free_bytes / GiB:,.1f}/{c.required_free_bytes / GiB:,.1f}",
                     conc, "pass" if c.passed else "[bold red]FAIL[/bold red]"])
    table = output.fitted_table(columns, rows, width=out.width, title=f"{result.file or 'plan'}: GiB per GPU",
                                title_justify="left")
    out.print(table)
    for c in result.deployments:
        for reason in c.reasons:
            out.print(f"{c.name}: {reason}", soft_wrap=True, markup=False)
    passed = len(result.deployments) - len(result.failed)
    out.print(f"{passed} of {len(result.deployments)} deployments pass.", style="dim" if result.passed else "")
    err = output.stderr_console()
    for c in result.deployments:
        for warning in c.estimate.warnings:
            err.print(f"Warning: {c.name}: {warning}", style="yellow", markup=False)
