"""Reports for CI systems: GitHub Actions workflow commands and JUnit XML.

Workflow commands (``::error file=F,line=L,title=T::message``) become annotations on the line of the
plan file in a pull request. Their escaping follows actions/toolkit ``packages/core/src/command.ts``
(``escapeData``: % CR LF; ``escapeProperty``: also : and ,). JUnit XML is the format CI servers
(GitLab, Jenkins, Buildkite, test-reporter actions) read test results from: one ``<testcase>`` per
deployment, a ``<failure>`` on those that fail, an ``<error>`` when the plan file cannot be read.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gpuplan.results import CheckResult, DeploymentCheck
from gpuplan.units import GiB


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation_path(file: str | None) -> str | None:
    """The file as GitHub wants it: relative to the checkout (GITHUB_WORKSPACE) when it lies inside it."""
    if file is None:
        return None
    workspace = os.environ.get("GITHUB_WORKSPACE")
    path = Path(file)
    if workspace:
        try:
            return Path(os.path.relpath(path.resolve(), Path(workspace).resolve())).as_posix()
        except ValueError:  # another drive on Windows
            return path.as_posix()
    return path.as_posix()


def workflow_command(kind: str, message: str, *, file: str | None = None, line: int | None = None,
                     title: str | None = None) -> str:
    """One ``::error ...::message`` line (kind: error, warning or notice)."""
    props = []
    shown = annotation_path(file)
    if shown is not None:
        props.append(f"file={escape_property(shown)}")
        if line is not None:
            props.append(f"line={line}")
    if title:
        props.append(f"title={escape_property(title)}")
    return f"::{kind}{' ' + ','.join(props) if props else ''}::{escape_data(message)}"


def _verdict_line(c: DeploymentCheck) -> str:
    where = f"{c.gpus} x {c.gpu}" if c.gpus > 1 else c.gpu
    text = f"{c.model} on {where} ({c.engine}): {c.total_bytes / GiB:,.2f} of {c.gpu_memory_bytes / GiB:,.2f} GiB"
    if c.max_concurrency is not None:
        text += f", {c.max_concurrency:.2f}x requests of {c.max_model_len:,} tokens"
    return text


def github_lines(result: CheckResult) -> list[str]:
    """Annotations for the failing deployments, then one plain line per deployment for the log."""
    lines = []
    for c in result.deployments:
        if not c.passed:
            lines.append(workflow_command("error", f"deployment {c.name!r} does not fit: " + "; ".join(c.reasons),
                                          file=result.file, line=c.line, title=f"gpuplan check: {c.name}"))
    for c in result.deployments:
        lines.append(f"{'PASS' if c.passed else 'FAIL'} {c.name}: {_verdict_line(c)}")
    passed = len(result.deployments) - len(result.failed)
    lines.append(f"{passed} of {len(result.deployments)} deployments pass")
    return lines


def issue_lines(issues: Iterable[Any]) -> list[str]:
    """Annotations for a plan file that could not be read or checked (Issue objects of gpuplan.planfile)."""
    return [workflow_command("error", issue.message + (f" ({issue.hint})" if issue.hint else ""), file=issue.file,
                             line=issue.line, title="gpuplan check") for issue in issues]


def step_summary(result: CheckResult) -> str:
    """A Markdown table for $GITHUB_STEP_SUMMARY, the job's summary page."""
    out = [f"### gpuplan check {result.file or ''}".rstrip(), "",
           "| deployment | model | GPUs | GiB per GPU | concurrency | result |", "|---|---|---|---:|---:|---|"]
    for c in result.deployments:
        conc = f"{c.max_concurrency:.2f} / {c.min_concurrency:g}" if c.max_concurrency is not None else ""
        verdict = "pass" if c.passed else "**fail**: " + "; ".join(c.reasons)
        out.append(f"| {c.name} | {c.model} | {c.gpus} x {c.gpu} | {c.total_bytes / GiB:,.2f} / "
                   f"{c.gpu_memory_bytes / GiB:,.2f} | {conc} | {verdict.replace('|', '/')} |")
    return "\n".join(out) + "\n"


def _suite(name: str, cases: Sequence[ET.Element], failures: int, errors: int) -> ET.Element:
    root = ET.Element("testsuites", name="gpuplan check", tests=str(len(cases)), failures=str(failures),
                      errors=str(errors))
    suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)), failures=str(failures),
                          errors=str(errors), skipped="0")
    suite.extend(cases)
    return root


def _write(root: ET.Element, path: str | Path) -> None:
    ET.indent(root)
    Path(path).write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
                          + "\n", encoding="utf-8")


def junit_xml(result: CheckResult) -> ET.Element:
    classname = f"gpuplan.check.{Path(result.file).stem}" if result.file else "gpuplan.check"
    cases = []
    for c in result.deployments:
        case = ET.Element("testcase", classname=classname, name=c.name)
        if result.file:
            case.set("file", result.file)
        if c.line is not None:
            case.set("line", str(c.line))
        if not c.passed:
            failure = ET.SubElement(case, "failure", message="; ".join(c.reasons), type="DoesNotFit")
            failure.text = _verdict_line(c)
        ET.SubElement(case, "system-out").text = _verdict_line(c)
        cases.append(case)
    return _suite(result.file or "plan", cases, failures=len(result.failed), errors=0)


def write_junit(result: CheckResult, path: str | Path) -> None:
    _write(junit_xml(result), path)


def write_junit_error(file: str | None, message: str, path: str | Path) -> None:
    """A report for a plan file that could not be checked: one test case in error."""
    case = ET.Element("testcase", classname="gpuplan.check", name=file or "plan file")
    ET.SubElement(case, "error", message=message.splitlines()[0], type="PlanFileError").text = message
    _write(_suite(file or "plan", [case], failures=0, errors=1), path)
