"""``hml policy check``: the pack's rules over a stack program, offline, for PR review.

Only typer is imported here; pulumi, the providers and the rules load inside the command so
that ``hml --help`` stays fast. Exit codes: 0 no mandatory violation, 1 at least one, 2 the
input (project, stack, pack configuration, the program itself) is unusable.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from hmlkit.clihelp import Command

app = typer.Typer(
    help="Evaluate the policy pack against a stack program without the Pulumi engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Output(StrEnum):
    text = "text"
    json = "json"


@app.callback()
def _policy() -> None:
    """Policy-as-code for infrastructure pull requests (keeps ``check`` a subcommand)."""


def _bad_input(message: str) -> NoReturn:
    typer.echo(f"hml: error: {message}", err=True)
    raise typer.Exit(2)


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        _bad_input(f"{path}: cannot write the report ({exc.strerror}); give a writable path")


@app.command(cls=Command)
def check(
    project_dir: Annotated[
        Path, typer.Argument(metavar="PROJECT_DIR", help="Pulumi project directory, e.g. stacks/platform")
    ],
    stack: Annotated[str, typer.Option("--stack", "-s", help="Stack name (reads Pulumi.<stack>.yaml)")],
    markdown: Annotated[Path | None, typer.Option(help="Write a Markdown report (PR comment)")] = None,
    sarif: Annotated[Path | None, typer.Option(help="Write a SARIF 2.1.0 file (code scanning)")] = None,
    pack_config: Annotated[
        Path | None,
        typer.Option("--pack-config", help="Pack configuration JSON, as for pulumi --policy-pack-config"),
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="text or json")] = Output.text,
) -> None:
    """Run PROJECT_DIR's program for --stack under mocks and check it against every rule."""
    from policies.evaluate import PolicyInputError, evaluate, load_pack_config
    from policies.report import render_table, to_json, to_markdown
    from policies.sarif import to_sarif

    try:
        report = evaluate(project_dir, stack, load_pack_config(pack_config))
    except PolicyInputError as exc:
        _bad_input(str(exc))
    if markdown:
        _write(markdown, to_markdown(report))
    if sarif:
        _write(sarif, json.dumps(to_sarif(report), indent=2) + "\n")
    if output is Output.json:
        json.dump(to_json(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_table(report)
    raise typer.Exit(0 if report.passed else 1)


if __name__ == "__main__":
    app()
