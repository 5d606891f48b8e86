"""What an offline check found, and its renderings: terminal table, Markdown, JSON.

One typed ``Report`` travels from the evaluator to every writer (SARIF lives in
``policies/sarif.py``), so the table a developer sees, the PR comment and the code-scanning
alerts always agree.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulumi_policy import EnforcementLevel

from policies.registry import Rule

_SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}


@dataclass(frozen=True)
class Location:
    """A file and line: where the program registered the resource, or the stack config."""

    path: Path
    line: int

    def display(self, base: Path | None = None) -> str:
        return f"{relative(self.path, base)}:{self.line}"


def relative(path: Path, base: Path | None = None) -> str:
    """``path`` relative to ``base`` (default: the working directory) when under it."""
    base = (base or Path.cwd()).resolve()
    return Path(os.path.relpath(path, base)).as_posix() if path.is_relative_to(base) else str(path)


@dataclass(frozen=True)
class Finding:
    """One violation of one rule by one resource (or by the whole stack when ``urn`` is None)."""

    rule: Rule
    enforcement: EnforcementLevel
    message: str
    urn: str | None
    resource_type: str | None
    resource_name: str | None
    location: Location | None
    origin: Location | None = None
    """The innermost registering call (e.g. inside a component), when not ``location``."""

    @property
    def mandatory(self) -> bool:
        return self.enforcement in (EnforcementLevel.MANDATORY, EnforcementLevel.REMEDIATE)

    @property
    def subject(self) -> str:
        if self.resource_type is None:
            return "(stack)"
        return f"{self.resource_type.rsplit(':', 1)[-1]} '{self.resource_name}'"


@dataclass(frozen=True)
class Note:
    """Something offline evaluation could not see; said out loud instead of passed silently."""

    message: str
    urn: str | None = None


@dataclass(frozen=True)
class Report:
    project: str
    stack: str
    project_dir: Path
    findings: list[Finding]
    notes: list[Note]
    rules: list[Rule]
    resource_count: int
    program_seconds: float = 0.0
    """Running the stack program under mocks."""
    rules_seconds: float = 0.0
    """Building the policy view and applying every rule."""

    @property
    def mandatory(self) -> list[Finding]:
        return [f for f in self.findings if f.mandatory]

    @property
    def passed(self) -> bool:
        return not self.mandatory

    def sorted_findings(self) -> list[Finding]:
        return sorted(
            self.findings,
            key=lambda f: (not f.mandatory, _SEVERITY_ORDER[f.rule.severity.value], f.rule.id, f.urn or ""),
        )

    def summary(self) -> str:
        counts = Counter("mandatory" if f.mandatory else "advisory" for f in self.findings)
        verdict = "FAIL" if counts["mandatory"] else "PASS"
        return (
            f"{verdict}: {self.project}/{self.stack}: {len(self.rules)} rules over "
            f"{self.resource_count} resources, {counts['mandatory']} mandatory and "
            f"{counts['advisory']} advisory violations, {len(self.notes)} notes"
        )


def to_json(report: Report) -> dict[str, Any]:
    return {
        "project": report.project,
        "stack": report.stack,
        "passed": report.passed,
        "resources": report.resource_count,
        "violations": [
            {
                "rule": f.rule.id,
                "severity": f.rule.severity.value,
                "enforcement": f.enforcement.value,
                "message": f.message,
                "urn": f.urn,
                "resource": f.subject,
                "location": f.location.display() if f.location else None,
                "origin": f.origin.display() if f.origin else None,
                "remediation": f.rule.remediation,
            }
            for f in report.sorted_findings()
        ],
        "notes": [{"message": n.message, "urn": n.urn} for n in report.notes],
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


#: GitHub refuses comments over 65,536 characters; past this many rows the rest is counted.
MARKDOWN_MAX_ROWS = 150


def to_markdown(report: Report, max_rows: int = MARKDOWN_MAX_ROWS) -> str:
    """A PR comment: verdict first, then one table row per violation, then what was not seen."""
    icon = ":white_check_mark:" if report.passed else ":x:"
    lines = [f"## {icon} Policy check `{report.project}/{report.stack}`", "", report.summary(), ""]
    if report.findings:
        lines += [
            "| | Rule | Severity | Resource | Violation | Where | Fix |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for f in report.sorted_findings()[:max_rows]:
            mark = ":no_entry:" if f.mandatory else ":warning:"
            where = f"`{f.location.display()}`" if f.location else ""
            where += f" via `{f.origin.display()}`" if f.origin else ""
            lines.append(
                f"| {mark} | `{f.rule.id}` | {f.rule.severity.value} | "
                f"{_cell(f.subject)} | {_cell(f.message)} | {where} | "
                f"{_cell(f.rule.remediation)} |"
            )
        if len(report.findings) > max_rows:
            lines.append(
                f"\n... and {len(report.findings) - max_rows} more violations: see "
                "the SARIF (code scanning) or `hml policy check -o json`."
            )
        lines.append("")
    if report.notes:
        lines += [f"<details><summary>Not visible offline ({len(report.notes)} notes)</summary>", ""]
        lines += [f"- {_cell(n.message)}" for n in report.notes]
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def render_table(report: Report) -> None:
    """Print the findings as a table on the terminal (rich is imported only here)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Policy check {report.project}/{report.stack}")
    for column in ("level", "rule", "severity"):
        table.add_column(column, no_wrap=True)
    for column in ("resource", "violation", "where"):
        table.add_column(column, overflow="fold")
    for f in report.sorted_findings():
        table.add_row(
            f.enforcement.value,
            f.rule.id,
            f.rule.severity.value,
            f.subject,
            f.message,
            f.location.display() if f.location else "",
        )
    if report.findings:
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note.message}", markup=False, highlight=False, soft_wrap=True)
    console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)
