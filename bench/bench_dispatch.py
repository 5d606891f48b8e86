"""Dispatch figures (issue 14): what ``hml`` adds to a round trip, each against its baseline.

    .venv/bin/python bench/bench_dispatch.py [--repeat N]

On a warm target (tracking server up, host reached and code staged before):
(a) ssh target: the whole job ``echo a; sleep 5; echo b`` (goal <= 1.2x plain ``ssh host``)
    and submit to its first remote line (goal <= 2x plain ssh's first line);
(b) local target, the embedded default after its first use (its local tracking server up, or
    the direct path with ``HML_LOCAL_SERVER=0``): submit to first line (goal
    <= 0.3 s; baseline: the command run directly);
(c) CLI: ``hml --help`` (< 0.1 s), ``hml status RUN`` (<= 0.12 s), ``hml list`` with 500
    runs in HML_HOME (<= 0.3 s), against ``python -c pass``; and which of mlflow, torch,
    boto3, pulumi, paramiko each of them imports (goal: none).

Each figure is taken the way a user meets it, with the warm agent (runners/cli/agent.py; the
first submit starts it), and again with ``HML_AGENT=0`` (every command a new interpreter) to
show what the agent is worth. Ratios are what count on a loaded machine; the goals in seconds
are for a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import BIN, first_line_latency, median_of, plain_ssh, report, wall  # noqa: E402

from tests.conftest import MlflowServer, free_port  # noqa: E402
from tests.sshbed import start_bed  # noqa: E402

HEAVY = ("mlflow", "torch", "boto3", "paramiko", "pulumi")
SSH_JOB = "echo line-a; sleep 5; echo line-b"  # markers no hml line contains
LOCAL_JOB = "echo first-line"
HML = str(BIN / "hml")
COLD = {"HML_AGENT": "0"}


def make_records(home: Path, n: int) -> str:
    """``n`` finished runs in ``home``, written by the real record code (no job runs); one id."""
    os.environ["HML_HOME"] = str(home)
    from runners.state.records import RunRecord

    now = time.time()
    run_id = ""
    for i in range(n):
        run_id = f"{i:04d}" + "0" * 28
        RunRecord(
            run_id=run_id,
            job=f"job-{i % 7}",
            experiment_id="1",
            target="local",
            target_config={"kind": "local"},
            tracking_uri=f"sqlite:///{home}/mlflow.db",
            spec={"name": f"job-{i % 7}", "run": "echo hi", "params": {"lr": 0.1}},
            workdir="/tmp",
            status="FINISHED",
            exit_code=0,
            submitted_at=now - i,
            started_at=now - i,
            ended_at=now - i + 3,
        ).save()
    return run_id


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    probe = (
        "import sys; from runners.cli import app; app.run(sys.argv[1:]); "
        f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
    )
    got = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True)
    return json.loads(got.stderr.strip().splitlines()[-1].replace("'", '"'))


def ssh_figures(tmp: Path, repeat: int) -> list[tuple[str, float, float]]:
    server = MlflowServer(tmp / "mlflow", free_port()).start()
    bed = start_bed(tmp / "bed", 1)
    try:
        known = tmp / "known_hosts"
        known.write_text(bed.known_hosts_text())
        profile = tmp / "hybridml.yaml"
        profile.write_text(json.dumps({"tracking_uri": server.url, "targets": {"onprem": bed.target(known)}}))
        env = {**os.environ, "HML_HOME": str(tmp / "ssh-home"), "HML_CONFIG": str(profile)}
        host = bed.hosts[0]
        ssh = plain_ssh(host, known)
        work = tmp / "work"
        work.mkdir()
        (work / "job.yaml").write_text(json.dumps({"name": "bench", "run": SSH_JOB}))
        submit = [HML, "submit", str(work / "job.yaml"), "--target", "onprem"]
        subprocess.run(submit, env=env, check=True, capture_output=True)  # warm: code staged once
        subprocess.run([HML, "agent", "start"], env=env, check=True, capture_output=True)
        cold = {**env, **COLD}

        plain_first = median_of(lambda: first_line_latency([*ssh, SSH_JOB], "line-a"), repeat)
        hml_first = median_of(lambda: first_line_latency(submit, "line-a", env=env), repeat)
        cold_first = median_of(lambda: first_line_latency(submit, "line-a", env=cold), repeat)
        plain_total = wall([*ssh, SSH_JOB], repeat=repeat)
        hml_total = wall(submit, repeat=repeat, env=env)
        cold_total = wall(submit, repeat=repeat, env=cold)
    finally:
        bed.stop()
        server.stop()
    return [
        ("ssh: submit to first remote line (goal <= 2x)", hml_first, plain_first),
        ("  the same, agent off", cold_first, plain_first),
        (f"ssh: whole job {SSH_JOB!r} (goal <= 1.2x)", hml_total, plain_total),
        ("  the same, agent off", cold_total, plain_total),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-ssh", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runtime = tmp / "xdg"  # this run's own agent, stopped at the end
        runtime.mkdir(mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        os.environ.pop("HML_AGENT", None)
        try:
            rows = figures(tmp, args)
        finally:
            subprocess.run([HML, "agent", "stop"], capture_output=True)
        report("dispatch: hml against its baseline in the same run (medians)", rows)
        list_env = {**os.environ, "HML_HOME": str(tmp / "list-home")}
        for name, argv in (("--help", ["--help"]), ("status", ["status", RUN_ID]), ("list", ["list"])):
            print(
                f"heavy modules imported by hml {name} (agent off): {heavy_imports(argv, list_env) or 'none'}"
            )


RUN_ID = "0499" + "0" * 28


def figures(tmp: Path, args: argparse.Namespace) -> list[tuple[str, float, float]]:
    rows = [] if args.skip_ssh else ssh_figures(tmp, args.repeat)

    env = {**os.environ, "HML_HOME": str(tmp / "local-home")}
    env.pop("HML_CONFIG", None)  # the embedded default
    job = tmp / "local.yaml"
    job.write_text(f"name: bench\nrun: {LOCAL_JOB}\n")
    subprocess.run([HML, "submit", str(job)], env=env, check=True, capture_output=True)  # first use
    # which starts the local tracking server in the background; `hml ui` waits until it answers
    # (HML_LOCAL_SERVER=0 measures the direct path to the SQLite store instead)
    if os.environ.get("HML_LOCAL_SERVER", "1") != "0":
        subprocess.run([HML, "ui"], env=env, check=True, capture_output=True)
    direct = median_of(lambda: first_line_latency(["bash", "-c", LOCAL_JOB], "first-line"), args.repeat)
    subprocess.run([HML, "agent", "start"], env=env, check=True, capture_output=True)
    try:
        local = median_of(
            lambda: first_line_latency([HML, "submit", str(job)], "first-line", env=env), args.repeat
        )
        cold_local = median_of(
            lambda: first_line_latency([HML, "submit", str(job)], "first-line", env={**env, **COLD}),
            args.repeat,
        )
    finally:
        subprocess.run([HML, "ui", "--stop"], env=env, check=True, capture_output=True)
    rows.append(("local: submit to first line (goal <= 0.3 s)", local, direct))
    rows.append(("  the same, agent off", cold_local, direct))

    list_env = {**env, "HML_HOME": str(tmp / "list-home")}
    assert make_records(tmp / "list-home", 500) == RUN_ID
    python = wall([sys.executable, "-c", "pass"], repeat=10)
    for what, argv, env_ in (
        ("hml --help (goal < 0.1 s)", ["--help"], env),
        ("hml status RUN (goal <= 0.12 s)", ["status", RUN_ID], list_env),
        ("hml list, 500 runs (goal <= 0.3 s)", ["list"], list_env),
    ):
        rows.append((what, wall([HML, *argv], repeat=10, env=env_), python))
        rows.append(("  the same, agent off", wall([HML, *argv], repeat=10, env={**env_, **COLD}), python))
    return rows


if __name__ == "__main__":
    main()
