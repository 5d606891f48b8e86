"""The ``hml`` command line. Heavy libraries load inside commands, so ``--help`` stays fast."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from hmlkit.clihelp import Command
from hmlkit.errors import HmlError
from policies.cli import app as policy_app
from runners.cli import model as model_cli
from runners.cli import sweep as sweep_cli
from runners.cli.budget import app as budget_app
from runners.cli.data import app as data_app
from runners.cli.env import app as env_app
from runners.cli.sweep import app as sweep_app
from runners.state.paths import run_dir
from runners.state.record_files import TERMINAL, is_sweep

app = typer.Typer(
    name="hml",
    help="Run the same training job on your laptop, on-prem GPU hosts or AWS; track it in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
targets_app = typer.Typer(help="List the profile's targets, or trust an SSH target's host keys.")
app.add_typer(targets_app, name="targets")
app.add_typer(policy_app, name="policy")
app.add_typer(data_app, name="data")
app.add_typer(model_cli.app, name="model")  # and `hml watch`, `hml retrain`: continuous training
app.add_typer(sweep_app)  # hml sweep; status, logs, cancel and list know sweeps (runners/cli/sweep.py)
app.add_typer(budget_app)  # hml budget
app.add_typer(env_app, name="env")
agent_app = typer.Typer(
    help="The warm agent that runs hml commands without start-up cost (HML_AGENT=0 turns it off)."
)
app.add_typer(agent_app, name="agent")


class Output(StrEnum):
    text = "text"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text or json")]
RunArg = Annotated[
    str, typer.Argument(metavar="RUN", help="Run id, or a unique prefix of it (as `hml list` shows)")
]
_state: dict[str, Any] = {"config": None}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"hml (hybridml) {version('hybridml')}")
        raise typer.Exit(0)


@app.callback()
def _main(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PROFILE",
            help="Environment profile (default: $HML_CONFIG, ./hybridml.yaml, the embedded default)",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit"),
    ] = False,
) -> None:
    _state["config"] = config


def _next_steps(run_id: str) -> str:
    short = run_id[:8]
    return f"follow it: hml logs {short} --follow; stop it: hml cancel {short}; state: hml status {short}"


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v}


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """What status, list and submit show of a run, from its record as JSON."""
    return {
        "run_id": record["run_id"],
        "job": record["job"],
        "status": record.get("status", "PENDING"),
        "target": record["target"],
        "tracking_uri": record["tracking_uri"],
        "experiment_id": record["experiment_id"],
        "exit_code": record.get("exit_code"),
        "reason": record.get("reason", ""),
        "attempts": record.get("attempt", 0) + 1,
        "cost_usd": record.get("cost_usd", 0.0),
        **{k: record[k] for k in ("instance_cost_usd",) if record.get(k) is not None},  # aws: the bill
        **_present({"inputs": record.get("spec", {}).get("inputs")}),
        **_present({k: record.get("usage", {}).get(k) for k in ("data_bytes", "data_streamed")}),
        "log": str(run_dir(record["run_id"]) / "output.log"),
    }


def _print_summary(record: dict[str, Any], output: Output, extra: dict[str, Any] | None = None) -> None:
    data = {**_summary(record), **(extra or {})}
    if output is Output.json:
        print(json.dumps(data))
        return
    width = max(len(key) for key in data)
    print("\n".join(f"{key:<{width}} {_shown(value)}" for key, value in data.items()))


def _shown(value: Any) -> str:
    if isinstance(value, dict):  # the system metrics: name value, ...
        return ", ".join(f"{k} {v:g}" for k, v in value.items())
    return "" if value is None else str(value)


def _run_link(record: dict[str, Any]) -> str:
    """The run in MLflow's UI at the address ``hml ui`` serves. The job's own MLflow client would
    name its relay's port, gone with the job, so the job is told not to print one
    (``runners.runs.jobenv``)."""
    from runners.tracking import local_server

    uri, page = record["tracking_uri"], f"#/experiments/{record['experiment_id']}/runs/{record['run_id']}"
    if local_server.is_local_store(uri):
        state = local_server.running()
        if state is None or not state.get("port"):
            return f"run `hml ui` and open {page} there"
        return f"{local_server.url_of(state)}/{page}"
    if uri.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        parts = urlsplit(uri.rstrip("/"))
        return f"{parts._replace(netloc=parts.netloc.rpartition('@')[2]).geturl()}/{page}"  # no password
    return f"`mlflow ui --backend-store-uri {uri}`, then {page}"


def _exit_for(record: dict[str, Any]) -> int:
    return 1 if record.get("status") in ("FAILED", "KILLED") else 0


@app.command(cls=Command)
def submit(
    job: Annotated[str, typer.Argument(metavar="JOB", help="The job file (YAML)")],
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            metavar="TARGET",
            help="A target of the profile, or auto: the placement order's first with room",
        ),
    ] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once the job is started")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            metavar="KEY=VALUE",
            help="Override a param (lr=0.1) or a job field by its dotted path (resources.gpus=2)",
        ),
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Fail at once when the target has no free capacity")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check job, profile, tracking server and target; run nothing")
    ] = False,
    team: Annotated[
        str | None, typer.Option("--team", metavar="TEAM", help="Whose budget the run spends (job's team:)")
    ] = None,
    env_of: Annotated[
        str | None,
        typer.Option(
            "--env-of", metavar="RUN", help="Run in that earlier run's exact environment (its lock)"
        ),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Submit a job; stream its output and wait unless --detach. Exit 0 success, 1 failure, 2 bad input."""
    from runners.runs.submit import follow, plan
    from runners.runs.submit import submit as do_submit

    set_ = [*(set_ or []), *([f"team={team}"] if team else [])]

    if dry_run:
        try:
            checked = plan(job, target, set_ or [], _state["config"], env_of)
        except HmlError as exc:  # each problem once, as every command says it; then the verdict
            _print_error(exc)
            count = len(str(exc).splitlines())
            print(f"not ready: {count} problem{'s' if count > 1 else ''} above", file=sys.stderr)
            raise typer.Exit(2) from None
        checked.backend.close()
        try:
            spend = _dry_run_budget(checked)
        except HmlError as exc:  # the run would be refused for its budget: as submit says it
            _print_error(exc)
            print("not ready: 1 problem above", file=sys.stderr)
            raise typer.Exit(2) from None
        resolved = {
            "job": checked.public(),
            "workdir": str(checked.workdir),
            "target": checked.target,
            "tracking_uri": checked.tracking_uri,
            **({"launch": checked.launch} if checked.launch else {}),
            **({"placement": checked.placement} if target == "auto" else {}),
            **({"inputs": {i.name: i.snapshot.ref for i in checked.inputs}} if checked.inputs else {}),
            **({"transfer_bytes": checked.transfer} if checked.transfer else {}),
            **({"environment": checked.environment} if checked.environment else {}),
            **spend,
        }
        print(json.dumps(resolved, indent=None if output is Output.json else 2))
        kind = checked.target_config["kind"]
        verdict = f"ready: would run on {checked.target!r} ({kind}), tracked in {checked.tracking_uri}"
        print(verdict, file=sys.stderr if output is Output.json else sys.stdout)
        return
    # one request to a server that went down must fail in seconds, not minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    record = do_submit(job, target, set_ or [], _state["config"], wait=not no_wait, env_of=env_of)
    say = sys.stderr if output is Output.json else sys.stdout
    print(
        f"hml: run {record.run_id[:8]} ({record.run_id}) on target {record.target!r} ({record.tracking_uri})",
        file=sys.stderr,
    )
    if detach:
        _print_summary(record.model_dump(), output)
        print(f"hml: {_next_steps(record.run_id)}", file=sys.stderr)
        return
    try:
        record = follow(record.run_id, out=say)
    except KeyboardInterrupt:
        print(f"\nhml: detached; the job goes on. {_next_steps(record.run_id)}", file=sys.stderr)
        raise typer.Exit(130) from None
    print(f"hml: in MLflow: {_run_link(record.model_dump())}", file=sys.stderr)
    _print_summary(record.model_dump(), output)
    raise typer.Exit(_exit_for(record.model_dump()))


def _dry_run_budget(checked: Any) -> dict[str, Any]:
    """The run's team, its worst-case cost and, where the team has a budget, what is left of it;
    raises BudgetExceeded as the submit would."""
    from runners.runs import budget

    worst = checked.worst_case_usd
    shown: dict[str, Any] = {"team": checked.team}
    if worst is not None:
        shown["projected_usd"] = round(worst, 2)
    if checked.budget is not None:
        budget.admit(checked.tracking_uri, checked.team, checked.budget, checked.spec, worst)
        now = budget.standing(checked.tracking_uri, checked.team, checked.budget)
        left = max(checked.budget.monthly_usd - now.spent, 0.0)
        shown["budget"] = {
            "monthly_usd": checked.budget.monthly_usd,
            "spent_usd": round(now.spent, 2),
            "left_usd": round(left, 2),
        }
    return shown


@app.command(cls=Command)
def status(
    run: RunArg,
    output: OutputOpt = Output.text,
) -> None:
    """Show a run's state; restarts its supervisor if that died."""
    from runners.runs.supervision import ensure_supervised
    from runners.state import record_files
    from runners.tracking import backlog, ownership

    record = record_files.read(run)
    if is_sweep(record):
        sweep_cli.ensure(record)
        return sweep_cli.show(record, output.value)
    ensure_supervised(record["run_id"], record.get("finalized", False))
    if said := backlog.catch_up(record):  # a journal left behind by a job finalized earlier
        print(f"hml: {said}", file=sys.stderr)
    live = record.get("status") == "RUNNING"  # the node's latest CPU, memory and GPU sample
    system = ownership.system_metrics(record["tracking_uri"], record["run_id"]) if live else {}
    _print_summary(record, output, _present({"system": system}))


@app.command(cls=Command)
def logs(
    run: RunArg,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends")] = False,
) -> None:
    """Print a run's output (redacted), from any shell; a sweep's: its trials as they go."""
    from runners.runs.submit import follow
    from runners.state import record_files

    record = record_files.read(run)
    if is_sweep(record):
        sweep_cli.follow(record, keep_following=follow_)
        return
    follow(record["run_id"], keep_following=follow_)


@app.command(cls=Command)
def cancel(
    run: RunArg,
    output: OutputOpt = Output.text,
) -> None:
    """Kill every process of a run and mark it KILLED; one that already ended is left as it was."""
    import time

    from runners.runs.supervision import ensure_supervised
    from runners.state import record_files

    record = record_files.read(run)
    if is_sweep(record):
        return sweep_cli.cancel(record, output.value)
    run_id = record["run_id"]
    if record.get("status") in TERMINAL:  # what was asked holds: exit 0, but say nothing was done
        print(f"hml: run {run_id} already {record['status']}; nothing to cancel", file=sys.stderr)
    else:
        record_files.cancel_flag(run_id).touch()
        ensure_supervised(run_id, record.get("finalized", False))
        deadline = time.monotonic() + 60
        while record.get("status") not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.05)
            record = record_files.read(run_id)
    _print_summary(record, output)
    if record.get("status") not in TERMINAL:
        raise HmlError(f"run {run_id} did not stop within 60 s; see {run_dir(run_id)}/supervisor.log")


class State(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


def _since(value: str | None) -> float | None:
    """A cut-off time from ``2h`` / ``3d`` (ago) or a date ``2026-11-30[T12:00]``."""
    if value is None:
        return None
    import time
    from datetime import datetime

    from runners.spec import parse_duration

    try:
        return time.time() - parse_duration(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use an age like 2h or 3d, or a date like 2026-11-30") from None


def _duration(record: dict[str, Any]) -> str:
    import time

    if not record.get("started_at"):
        return ""
    seconds = int((record.get("ended_at") or time.time()) - record["started_at"])
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _check_target(name: str, records: list[dict[str, Any]]) -> None:
    """A target no run here used is a typo unless the profile has it: an empty table would hide it."""
    used = {r["target"] for r in records}
    if name in used:
        return
    from runners.profile import load_profile

    known = sorted(used | set(load_profile(_state["config"]).targets))
    if name not in known:
        raise typer.BadParameter(
            f"{name!r} is no target of the profile nor of any run here; known: {', '.join(known)}",
            param_hint="'--target'",
        )


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, metavar="N", help="Most recent N runs")] = 20,
    state: Annotated[
        list[State] | None,
        typer.Option(
            "--state", metavar="STATE", case_sensitive=False, help="Only runs in this state (repeat it)"
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", "-t", metavar="TARGET", help="Only runs on this target")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="AGE|DATE", help="Only runs submitted since: 2h, 3d, 2026-11-30"),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """List recent runs submitted from this machine (short ids work in every command)."""
    from datetime import datetime

    from runners.state import record_files

    cutoff = _since(since)
    wanted = {s.value for s in state or []}
    records = record_files.read_all()
    if target is not None:
        _check_target(target, records)
    chosen = [
        r
        for r in records
        if (not wanted or r.get("status", "PENDING") in wanted)
        and (target is None or r["target"] == target)
        and (cutoff is None or r.get("submitted_at", 0) >= cutoff)
    ][:limit]
    if output is Output.json:
        print(json.dumps([{**_summary(r), "short_id": r["run_id"][:8]} for r in chosen]))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("RUN", no_wrap=True, min_width=8)
    table.add_column("JOB", overflow="fold")
    table.add_column("TARGET", overflow="fold")
    table.add_column("STATE", no_wrap=True)
    table.add_column("STARTED", no_wrap=True)
    table.add_column("TIME", no_wrap=True, justify="right")
    table.add_column("COST", no_wrap=True, justify="right")
    for r in chosen:
        when = r.get("started_at") or r.get("submitted_at", 0)
        started = datetime.fromtimestamp(when).strftime("%m-%d %H:%M")
        cost = f"${r.get('cost_usd', 0.0):.2f}"
        job = f"{r['job']} (sweep)" if is_sweep(r) else r["job"]
        table.add_row(
            r["run_id"][:8], job, r["target"], r.get("status", "PENDING"), started, _duration(r), cost
        )
    Console().print(table)


@app.command()
def gc(output: OutputOpt = Output.text) -> None:
    """Release what the profile's targets still hold for finished or unknown runs (cloud instances),
    and send the relay journals finished runs left on this machine."""
    from runners.profile import load_profile
    from runners.runs.submit import collect_garbage
    from runners.state import record_files
    from runners.tracking import backlog

    profile = load_profile(_state["config"])
    done = collect_garbage(profile.targets)  # also run by every submit, for its target
    for record in record_files.read_all():  # here only: it reads every record
        if said := backlog.catch_up(record):
            done.append(f"{record['run_id']}: {said}")
    if output is Output.json:
        print(json.dumps(done))
        return
    print("\n".join(done) if done else "nothing to release")


@agent_app.callback(invoke_without_command=True)
def agent(ctx: typer.Context, output: OutputOpt = Output.text) -> None:
    """Whether this code's agent runs, and where it listens."""
    if ctx.invoked_subcommand:
        return
    from runners.cli import agent_client

    found = agent_client.ping()
    state = {"enabled": agent_client.enabled(), "running": found is not None, "pid": found}
    state["socket"] = str(agent_client.socket_path()) if state["enabled"] else None  # may refuse
    if output is Output.json:
        print(json.dumps(state))
        return
    if not state["enabled"]:
        print("agent: off (HML_AGENT=0)")
        return
    print(f"agent: {f'running, pid {found}' if found else 'not running'} ({state['socket']})")


@agent_app.command("start")
def agent_start() -> None:
    """Start the agent now and wait until it answers (hml submit otherwise starts it)."""
    from runners.cli import agent_client

    if not agent_client.enabled():
        raise HmlError("the agent is off (HML_AGENT=0)")
    print(f"agent: running, pid {agent_client.start_and_wait()}")


@agent_app.command("stop")
def agent_stop() -> None:
    """Stop the agent; runs it started go on (each has its own supervisor process)."""
    from runners.cli import agent_client

    print("agent: stopped" if agent_client.stop() else "agent: not running")


@app.command()
def ui(
    stop: Annotated[bool, typer.Option("--stop", help="Stop the local tracking server instead")] = False,
    output: OutputOpt = Output.text,
) -> None:
    """Print the MLflow UI's address; for the embedded default, start its local tracking server
    (loopback only, yours only, stopped after HML_LOCAL_SERVER_IDLE_S without use), wait until it
    answers and print the address that logs your browser in (it carries the server's token)."""
    from hmlkit.errors import ProfileError, TrackingError
    from runners.profile import load_profile, tracking_uri
    from runners.tracking import local_server

    if stop:
        stopped = local_server.stop()
        if output is Output.json:
            print(json.dumps({"stopped": stopped}))
        else:
            print("local tracking server stopped" if stopped else "no local tracking server was running")
        return
    profile = load_profile(_state["config"])
    uri = tracking_uri(profile)
    if uri.startswith(("http://", "https://")):
        url = browser = uri  # the profile's own server serves its UI
    elif local_server.is_local_store(uri):
        from runners.progress import step

        with step("starting the local tracking server"):
            try:
                url = local_server.ensure()
            except RuntimeError as exc:
                raise TrackingError(str(exc)) from None
        browser = local_server.login_url(url)  # it answers its owner only: this logs the browser in
    else:
        raise ProfileError(
            profile.source,
            [
                f"tracking_uri: hml ui serves http(s) servers and the embedded default, not {uri}; "
                f"run `mlflow ui --backend-store-uri {uri}`"
            ],
        )
    if output is Output.json:
        print(json.dumps({"url": url, "tracking_uri": uri, "browser_url": browser}))
    else:
        print(browser)


@targets_app.callback(invoke_without_command=True)
def targets(ctx: typer.Context, output: OutputOpt = Output.text) -> None:
    """List the targets of the environment profile."""
    if ctx.invoked_subcommand:
        return
    from runners.profile import load_profile, tracking_uri

    profile = load_profile(_state["config"])
    default = profile.default_target or ("local" if "local" in profile.targets else None)
    rows = [
        {"name": name, "kind": raw["kind"], "default": name == default}
        for name, raw in profile.targets.items()
    ]
    if output is Output.json:
        print(
            json.dumps(
                {
                    "source": profile.source,
                    "tracking_uri": tracking_uri(profile),
                    "targets": rows,
                }
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "default", title=f"targets ({profile.source})")
    for row in rows:
        table.add_row(row["name"], row["kind"], "yes" if row["default"] else "")
    Console().print(table)
    print(f"tracking: {tracking_uri(profile)}")


def _print_error(exc: BaseException) -> None:
    print("\n".join(f"hml: error: {line}" for line in str(exc).splitlines()), file=sys.stderr)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; every HmlError becomes one line per problem and its exit code."""
    from hmlkit.extras import EXTRA_OF, MissingExtra

    try:
        app(args=argv, prog_name="hml")  # click handles usage errors itself: exit 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (HmlError, MissingExtra) as exc:
        _print_error(exc)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in EXTRA_OF:
            raise
        missing = MissingExtra(exc.name or "")
        _print_error(missing)
        return missing.exit_code
    return 0


@targets_app.command("trust", cls=Command)
def targets_trust(
    name: Annotated[str, typer.Argument(metavar="TARGET", help="An ssh target of the profile")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Record without asking")] = False,
) -> None:
    """Show the hosts' SSH key fingerprints and, once confirmed, record them in known_hosts."""
    from runners.backends import make_backend
    from runners.profile import load_profile

    profile = load_profile(_state["config"])
    profile.pick(name)

    def confirm(found: list[tuple[str, str, str]]) -> bool:
        for host, kind, fp in found:
            print(f"{host} {kind} {fp}")
        return yes or typer.confirm("Do these fingerprints match what the hosts' admin published?")

    with make_backend(name, profile.targets[name]) as backend:
        recorded = backend.trust(confirm)
    if not recorded:
        raise HmlError("nothing recorded")
    print(f"recorded {len(recorded)} host key(s)")


app.command(cls=Command)(model_cli.watch)  # registered last: `hml --help` lists them after the others
app.command(cls=Command)(model_cli.retrain)


def main() -> None:
    os.umask(0o077)  # run records, logs and the embedded store are the user's alone
    try:
        sys.exit(run())
    except BrokenPipeError:
        os._exit(0)
