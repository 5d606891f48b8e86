"""``hml env``: the Python environment a run had (its lock, digest, and what the job saw)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from hmlkit.clihelp import Command

app = typer.Typer(help="The Python environment of a run: its lock, digest and the versions it saw.")

OutputOpt = Annotated[str, typer.Option("--output", "-o", help="text or json")]


def environment_of(ctx: typer.Context, run: str) -> dict[str, Any]:
    """This machine's record of ``run`` (id or unique prefix), else what MLflow holds of it."""
    from hmlkit.errors import RunNotFound
    from runners.envs import lock as envlock
    from runners.state import record_files, records

    try:
        rec = records.load(record_files.read(run)["run_id"])
        text, tags, run_id = envlock.load(rec.dir), dict(rec.target_tags), rec.run_id
    except RunNotFound:
        from runners.profile import load_profile, tracking_uri
        from runners.tracking.environment import from_run

        text, tags = from_run(tracking_uri(load_profile(ctx.find_root().params.get("config"))), run)
        run_id = run
    seen = {k.removeprefix("hml.env."): v for k, v in tags.items() if k.startswith("hml.env.")}
    return {
        "run_id": run_id,
        "digest": envlock.digest_of(text) if text else None,
        "python_asked": (envlock.python_of(text) or "python3") if text else "python3",
        **{f"seen_{k}": v for k, v in sorted(seen.items()) if k != "digest"},
        "lock": text,
    }


@app.command(cls=Command)
def show(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, or a unique prefix of it")],
    output: OutputOpt = "text",
) -> None:
    """A run's environment: digest, the Python and CUDA it saw, build time, and its lock."""
    if output not in ("text", "json"):
        raise typer.BadParameter(f"{output!r}: use text or json", param_hint="'--output'")
    shown = environment_of(ctx, run)
    if output == "json":
        print(json.dumps(shown))
        return
    lock = shown.pop("lock")
    width = max(len(k) for k in shown)
    print("\n".join(f"{k:<{width}} {'' if v is None else v}" for k, v in shown.items()))
    print(
        f"\n{lock}"
        if lock
        else "\nno environment: (the job ran on the host's own python3, in a venv of its own)"
    )
