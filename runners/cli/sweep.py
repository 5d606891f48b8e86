"""``hml sweep``: a hyper-parameter search whose trials are ordinary hml runs (docs/sweeps.md).

``hml status|logs|cancel SWEEP`` and ``hml list`` know sweeps by their record's ``kind``; what
they show of one is here (``show``, ``follow``, ``cancel``), read from the record as JSON
without loading Optuna.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any, Literal

import typer

from hmlkit.clihelp import Command
from hmlkit.errors import HmlError
from runners.state import record_files
from runners.state.paths import run_dir
from runners.state.record_files import TERMINAL

app = typer.Typer()


@app.command(cls=Command)
def sweep(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", help="The job file (YAML)")],
    space: Annotated[
        str | None,
        typer.Option("--space", metavar="SPACE.yaml", help="The search (default: the job file's sweep:)"),
    ] = None,
    target: Annotated[
        str,
        typer.Option(
            "--target", "-t", metavar="TARGET", help="Where trials run; auto spills to the next target"
        ),
    ] = "auto",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", metavar="KEY=VALUE", help="Override a param or job field for every trial"
        ),
    ] = None,
    max_trials: Annotated[int | None, typer.Option("--max-trials", metavar="N")] = None,
    parallel: Annotated[int | None, typer.Option("--parallel", metavar="N", help="Trials at once")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", metavar="tpe|random|grid")] = None,
    pruner: Annotated[str | None, typer.Option("--pruner", metavar="none|median|hyperband")] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option("--max-cost-usd", metavar="USD", help="The sweep's budget")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N")] = None,
    team: Annotated[
        str | None, typer.Option("--team", metavar="TEAM", help="Whose budget the trials spend")
    ] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once the sweep is started")] = False,
    output: Annotated[Literal["text", "json"], typer.Option("--output", "-o", help="text or json")] = "text",
) -> None:
    """Search a job's params: each trial an hml run (retries, logs, cancel, placement), one MLflow
    parent run with a child per trial. Exit 0 when a trial completed, 1 otherwise, 2 bad input."""
    from runners.sweeps.start import start

    flags = {
        "max_trials": max_trials,
        "parallel": parallel,
        "sampler": sampler,
        "pruner": pruner,
        "max_cost_usd": max_cost_usd,
        "seed": seed,
    }
    overrides = [*(set_ or []), *([f"team={team}"] if team else [])]
    rec = start(job, space, target, overrides, ctx.find_root().params.get("config"), flags)
    short = rec.run_id[:8]
    print(f"hml: sweep {short} ({rec.run_id}) of {rec.job}, trials on {rec.target!r}", file=sys.stderr)
    if detach:
        show(rec.model_dump(), output)
        print(f"hml: follow it: hml logs {short} -f; state: hml status {short}", file=sys.stderr)
        return
    try:
        final = follow(
            rec.model_dump(), keep_following=True, out=sys.stderr if output == "json" else sys.stdout
        )
    except KeyboardInterrupt:
        print(f"\nhml: detached; the sweep goes on. hml status {short}; hml cancel {short}", file=sys.stderr)
        raise typer.Exit(130) from None
    show(final, output)
    raise typer.Exit(0 if final.get("status") == "FINISHED" else 1)


def ensure(record: dict[str, Any]) -> None:
    """Restart the sweep's supervisor if it died; it resumes from the study's storage."""
    from runners.runs.supervision import is_supervised, spawn_process
    from runners.sweeps.start import SUPERVISOR

    if not record.get("finalized") and not is_supervised(record["run_id"]):
        spawn_process(SUPERVISOR, record["run_id"])


def summary(record: dict[str, Any]) -> dict[str, Any]:
    trials = record.get("trials", [])
    by_state: dict[str, int] = {}
    by_target: dict[str, int] = {}
    for t in trials:
        by_state[t["state"]] = by_state.get(t["state"], 0) + 1
        if t.get("target"):
            by_target[t["target"]] = by_target.get(t["target"], 0) + 1
    config = record.get("sweep", {})
    return {
        "sweep_id": record["run_id"],
        "kind": "sweep",
        "job": record["job"],
        "status": record.get("status", "PENDING"),
        "reason": record.get("reason", ""),
        "target": record["target"],
        "tracking_uri": record["tracking_uri"],
        "experiment_id": record["experiment_id"],
        "objective": config.get("objective"),
        "best": record.get("best"),
        "trials_by_state": by_state,
        "trials_by_target": by_target,
        "max_trials": config.get("max_trials"),
        "cost_usd": record.get("cost_usd", 0.0),
        "max_cost_usd": config.get("max_cost_usd"),
        "trials": trials,
        "log": str(run_dir(record["run_id"]) / "output.log"),
    }


def show(record: dict[str, Any], output: str) -> None:
    data = summary(record)
    if output == "json":
        print(json.dumps(data))
        return
    trials = data.pop("trials")
    best = data.pop("best")
    objective = data.pop("objective") or {}
    data["best"] = (
        f"trial {best['number']}: {objective.get('metric')} {best['value']:g} {best['params']}"
        if best
        else ""
    )
    for key in ("trials_by_state", "trials_by_target"):
        data[key] = ", ".join(f"{k} {v}" for k, v in data[key].items())
    width = max(len(k) for k in data)
    print("\n".join(f"{k:<{width}} {'' if v is None else v}" for k, v in data.items()))
    for t in trials:
        value = "" if t.get("value") is None else f" {t['value']:g}"
        run = (t.get("run_id") or "")[:8]
        print(
            f"  #{t['number']:<3} {t['state']:<8} {t.get('target') or '-':<10} {run:<8}{value} {t['params']}"
        )


def follow(record: dict[str, Any], keep_following: bool, out: Any = sys.stdout) -> dict[str, Any]:
    """Print the sweep's log (trials started, pruned, ended, the best so far)."""
    sweep_id, pos, checked = record["run_id"], 0, time.monotonic()
    ensure(record)
    while True:
        done = record.get("status") in TERMINAL
        try:
            with open(run_dir(sweep_id) / "output.log", encoding="utf-8", errors="replace") as fh:
                fh.seek(pos)
                data, pos = fh.read(), fh.tell()
        except FileNotFoundError:
            data = ""
        if data:
            out.write(data)
            out.flush()
        if done or not keep_following:
            return record
        time.sleep(0.2)
        record = record_files.read(sweep_id)
        if time.monotonic() - checked > 5:
            ensure(record)
            checked = time.monotonic()


def cancel(record: dict[str, Any], output: str) -> None:
    """Stop every trial of the sweep and the sweep; one that already ended is left as it was."""
    sweep_id = record["run_id"]
    if record.get("status") in TERMINAL:
        print(f"hml: sweep {sweep_id} already {record['status']}; nothing to cancel", file=sys.stderr)
    else:
        record_files.cancel_flag(sweep_id).touch()
        ensure(record)
        deadline = time.monotonic() + 120
        while record.get("status") not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.2)
            record = record_files.read(sweep_id)
    show(record, output)
    if record.get("status") not in TERMINAL:
        raise HmlError(f"sweep {sweep_id} did not stop within 120 s; see {run_dir(sweep_id)}/supervisor.log")
