"""``hml data``: snapshot a prefix, list the datasets, show a version and the runs that used it."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from hmlkit.clihelp import Command

app = typer.Typer(help="Versioned datasets: snapshot an S3 prefix, list them, show a version and its runs.")


def _profile(ctx: typer.Context) -> Any:
    """The profile named by ``hml --config`` (the root command's option), else the usual lookup."""
    from runners.profile import load_profile

    return load_profile(ctx.find_root().params.get("config"))


def _json(output: str) -> bool:
    if output not in ("text", "json"):
        raise typer.BadParameter(f"{output!r}: use text or json", param_hint="'--output'")
    return output == "json"


OutputOpt = Annotated[str, typer.Option("--output", "-o", help="text or json")]


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _summary(snap: Any) -> dict[str, Any]:
    return {
        "ref": snap.ref,
        "name": snap.name,
        "version": snap.version,
        "source": snap.source,
        "store": snap.store,
        "manifest": f"s3://{snap.where.bucket}/{snap.manifest_key}",
        "objects": len(snap.objects),
        "bytes": snap.size,
        "digest": snap.digest,
        "created_by": snap.created_by,
        "created_at": snap.created_at,
    }


@app.command(cls=Command)
def snapshot(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The dataset's name, e.g. digits")],
    prefix: Annotated[
        str, typer.Argument(metavar="S3_PREFIX", help="s3://bucket/prefix to freeze as it is now")
    ],
    output: OutputOpt = "text",
) -> None:
    """Freeze an S3 prefix (every object's version, size and hash) as NAME's next version."""
    from runners.data.manifest import parse_ref, parse_uri
    from runners.data.store import store_of

    as_json = _json(output)
    ref = parse_ref(name, "NAME")
    if ref.version:
        raise typer.BadParameter(
            f"{name!r}: versions are given by hml; pass the name only", param_hint="NAME"
        )
    where = parse_uri(prefix, "S3_PREFIX")
    snap = store_of(_profile(ctx), where.bucket, "S3_PREFIX").snapshot(ref.name, where, "S3_PREFIX")
    if as_json:
        print(json.dumps(_summary(snap)))
        return
    print(snap.ref)
    print(f"{len(snap.objects)} objects, {_size(snap.size)} from {snap.source}", file=sys.stderr)


@app.command("list")
def list_(ctx: typer.Context, output: OutputOpt = "text") -> None:
    """List the datasets in the profile's stores, with their latest version."""
    from runners.data.store import Store, stores

    as_json = _json(output)
    rows = []
    for store_name, config, bucket in stores(_profile(ctx)):
        store = Store(store_name, config)
        for name in store.names(bucket):
            versions = store.versions(bucket, name)
            if versions:
                latest = store.read(bucket, name, versions[-1])
                rows.append({**_summary(latest), "versions": versions})
    if as_json:
        print(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("DATASET", "LATEST", "VERSIONS", "OBJECTS", "SIZE", "SOURCE", "CREATED"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            r["name"],
            r["version"],
            str(len(r["versions"])),
            str(r["objects"]),
            _size(r["bytes"]),
            r["source"],
            f"{r['created_at']} {r['created_by']}",
        )
    Console().print(table)


@app.command(cls=Command)
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]", help="A dataset, or one version of it")],
    output: OutputOpt = "text",
) -> None:
    """A version (default: the latest): objects, bytes, who made it when, and the runs that used it."""
    from hmlkit.errors import TrackingError
    from runners.data.manifest import parse_ref
    from runners.data.store import Store, find
    from runners.profile import tracking_uri
    from runners.tracking import lineage

    as_json = _json(output)
    profile = _profile(ctx)
    snap = find(profile, parse_ref(ref, "NAME[@VERSION]"), "NAME[@VERSION]")
    versions = Store(snap.store, profile.stores[snap.store]).versions(snap.where.bucket, snap.name)
    runs: list[dict[str, Any]] | None
    try:
        runs = lineage.runs_using(tracking_uri(profile), snap.name, snap.version)
    except TrackingError as exc:
        print(f"hml: warning: runs unknown: {exc}", file=sys.stderr)
        runs = None
    data = {**_summary(snap), "versions": versions, "runs": runs}
    if as_json:
        print(json.dumps(data))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key in ("ref", "source", "manifest", "objects", "bytes", "digest", "created_by", "created_at"):
        table.add_row(key, str(data[key]))
    table.add_row("versions", ", ".join(versions))
    Console().print(table)
    if runs is None:
        return
    runs_table = Table("RUN", "JOB", "INPUT", "STATE", title=f"runs that used {snap.ref}: {len(runs)}")
    for r in runs:
        runs_table.add_row(r["run_id"], r["job"], r["input"], r["status"])
    Console().print(runs_table)
