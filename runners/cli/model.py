"""``hml model`` (list, show, promote, rollback), ``hml watch`` and ``hml retrain``: continuous training.

A job with a ``model:`` section registers its model with its lineage and gates it when it
succeeds (the supervisor does); these commands show the registry, judge or restore a version
by hand, and run the job's ``triggers:`` (docs/models.md).
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Annotated, Any

import typer

from hmlkit.clihelp import Command

app = typer.Typer(help="Registered models: versions with their lineage, the champion, promote and roll back.")
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="text or json")]
ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="A registered model's name")]


def _json(output: str) -> bool:
    if output not in ("text", "json"):
        raise typer.BadParameter(f"{output!r}: use text or json", param_hint="'--output'")
    return output == "json"


def _config(ctx: typer.Context) -> str | None:
    value: str | None = ctx.find_root().params.get("config")
    return value


def _where(ctx: typer.Context) -> tuple[Any, str]:
    from runners.profile import load_profile, tracking_uri

    profile = load_profile(_config(ctx))
    return profile, tracking_uri(profile)


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@app.command("list")
def list_(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Argument(metavar="[MODEL]", help="Its versions; none: every model")
    ] = None,
    output: OutputOpt = "text",
) -> None:
    """The registered models and their champions, or one model's versions with each decision."""
    from runners.registry import gate

    as_json = _json(output)
    _, uri = _where(ctx)
    if model is None:
        rows = gate.models(uri)
        if as_json:
            print(json.dumps(rows))
            return
        _table(
            ("MODEL", "CHAMPION", "METRIC"), [(r["name"], r["champion"] or "-", r["metric"]) for r in rows]
        )
        return
    found = gate.versions(uri, _checked(model))
    if as_json:
        print(json.dumps(found))
        return
    _table(
        ("VERSION", "", "RUN", "DATA", "VALUE", "DECISION"),
        [
            (
                r["version"],
                "champion" if r["champion"] else "",
                (r["run_id"] or "")[:8],
                " ".join(r["inputs"].values()),
                r["value"] or "",
                r["decision"],
            )
            for r in found
        ],
    )


def _checked(name: str) -> str:
    """A model name as the job file allows it (so it can go into a registry search)."""
    import re

    from runners.training import MODEL_NAME_PATTERN

    if not re.match(MODEL_NAME_PATTERN, name):
        raise typer.BadParameter(
            f"{name!r} is no model name: letters, digits, '.', '_' and '-' (hml model list shows them)",
            param_hint="MODEL",
        )
    return name


def _split(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    _checked(name)
    if version and not version.isdigit():
        raise typer.BadParameter(
            f"{ref!r}: the version is a number, e.g. {name}@3", param_hint="MODEL[@VERSION]"
        )
    return name, version or None


@app.command(cls=Command)
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="MODEL[@VERSION]", help="A version; none: the champion")],
    output: OutputOpt = "text",
) -> None:
    """A version's lineage (data, code, environment, params, run) and its gate decision."""
    from runners.registry import gate

    as_json = _json(output)
    _, uri = _where(ctx)
    name, version = _split(ref)
    data = gate.show(uri, name, version)
    if as_json:
        print(json.dumps(data))
        return
    print(
        f"{name} version {data['version']}{' (champion)' if data['champion'] else ''}, run {data['run_id']}"
    )
    _table(("LINEAGE", ""), [(k, v) for k, v in sorted(data["lineage"].items())])
    _table(("GATE", ""), [(k, v) for k, v in sorted(data["gate"].items())])


@app.command(cls=Command)
def promote(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="MODEL@VERSION", help="The candidate, e.g. digits-clf@4")],
    output: OutputOpt = "text",
) -> None:
    """Judge a version against the champion (its declared metric and the promotion rules) and make it
    the champion if it wins. Exit 0 promoted, 1 not promoted (the reason says why)."""
    from runners.registry import gate

    as_json = _json(output)
    profile, uri = _where(ctx)
    name, version = _split(ref)
    if version is None:
        raise typer.BadParameter(f"{ref!r}: name the version, e.g. {name}@3", param_hint="MODEL@VERSION")
    decision = gate.evaluate(uri, profile, name, version)
    if as_json:
        print(json.dumps(decision.as_dict()))
    else:
        print(f"{name} version {version}: {decision.verdict}: {decision.reason}")
    if decision.verdict != "promoted" and not (decision.verdict == "kept" and decision.champion == version):
        raise typer.Exit(1)


@app.command(cls=Command)
def rollback(ctx: typer.Context, model: ModelArg, output: OutputOpt = "text") -> None:
    """Give the champion alias back to the version the current champion replaced."""
    from runners.registry import gate

    as_json = _json(output)
    _, uri = _where(ctx)
    was, now = gate.rollback(uri, _checked(model))
    if as_json:
        print(json.dumps({"name": model, "from": was, "to": now}))
        return
    print(f"{model}: champion is version {now} again (was {was})")


JobsArg = Annotated[list[str], typer.Argument(metavar="JOB...", help="Job files with a triggers: section")]
TargetOpt = Annotated[
    str | None,
    typer.Option("--target", "-t", metavar="TARGET", help="Where the runs go (default: the profile's)"),
]


def watch(
    ctx: typer.Context,
    jobs: JobsArg,
    target: TargetOpt = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between rounds")] = 60.0,
    catch_up: Annotated[
        str, typer.Option("--catch-up", metavar="AGE", help="A cron time missed by at most this still fires")
    ] = "1h",
    once: Annotated[bool, typer.Option("--once", help="One round, then exit")] = False,
) -> None:
    """Run the jobs' triggers as a service: each new snapshot version or cron time trains once, however
    many watchers run (state in the tracking server; docs/models.md has systemd and Kubernetes examples)."""
    from runners.runs.triggers import watch as run_watch
    from runners.spec import parse_duration

    try:
        window = timedelta(seconds=parse_duration(catch_up))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--catch-up'") from None

    def say(line: str) -> None:
        print(f"hml watch: {line}", file=sys.stderr, flush=True)

    run_watch(jobs, target, _config(ctx), interval, window, once, say)


def retrain(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", help="The job file")],
    on: Annotated[
        str, typer.Option("--on", metavar="NAME", help="The dataset whose latest version to train on")
    ],
    target: TargetOpt = None,
) -> None:
    """Train JOB on dataset NAME's latest snapshot version, unless a run (or a watcher) already did."""
    from runners.profile import load_profile, tracking_uri
    from runners.runs.triggers import Claims, load_watched, submitter, tick

    watched = load_watched(job, on=on)
    profile = load_profile(_config(ctx))
    claims = Claims(tracking_uri(profile))
    for line in tick(watched, profile, claims, submitter(job, target, _config(ctx)), timedelta(0)):
        print(line)
