"""Dispatch figures (issue 14): what ``hml`` adds to a round trip, each against its baseline.

    .venv/bin/python bench/bench_dispatch.py [--repeat N] [--bed both|fast|stock] [--skip-local] [--cold]

On a warm target (tracking server up, host reached and code staged before):
(a) ssh target: the whole job ``echo a; sleep 5; echo b`` (goal <= 1.1x plain ``ssh host``)
    and submit to its first remote line (goal <= 2x plain ssh's first line), on two hosts
    (``--bed``): the fast bed (PAM off, no start-up files) and one as users' hosts are (issue 27:
    Debian's stock sshd with PAM, a login whose ``~/.bashrc`` takes ~150 ms), each with the
    session helper (hmlkit/ssh/session.py) and with a session per command (``HML_SSH_SESSION=0``,
    the fallback), and the SSH sessions a submit opens (the runner's count; on the stock host
    also the host's own: its ``.bashrc`` counts its runs);
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
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import BIN, first_line_latency, median_of, plain_ssh, report, wall  # noqa: E402

from tests.conftest import MlflowServer, free_port  # noqa: E402
from tests.sshbed import SLOW_BASHRC, Login, start_bed  # noqa: E402

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


BASHRC = SLOW_BASHRC + "echo login >> ~/.hml-logins\n"
"""The stock host's login user: a start-up of ~150 ms (conda's init stands in), counting itself:
each SSH session sshd starts runs it once."""


def sessions_per_submit(home: Path) -> float:
    """Median SSH sessions the runner opened per submit, from each run's supervisor.log (with the
    warm agent the submit's connection and its sessions are the supervisor's)."""
    counts = []
    for log in (home / "runs").glob("*/supervisor.log"):
        said = [line for line in log.read_text().splitlines() if "target commands so far:" in line]
        if said:
            counts.append(int(said[-1].rsplit(":", 1)[1]))
    return statistics.median(counts) if counts else float("nan")


def ssh_figures(
    tmp: Path, repeat: int, stock: bool, cold: bool
) -> tuple[list[tuple[str, float, float]], list[str]]:
    """``stock``: Debian's sshd settings (PAM on) and a login whose ``~/.bashrc`` takes ~150 ms,
    as users' hosts are; else the fast bed (PAM off, no start-up files)."""
    kind = "stock" if stock else "fast"
    server = MlflowServer(tmp / f"mlflow-{kind}", free_port()).start()
    bed = start_bed(tmp / f"bed-{kind}", 1, login=Login(bashrc=BASHRC) if stock else None)
    notes = []
    try:
        known = tmp / f"known_hosts-{kind}"
        known.write_text(bed.known_hosts_text())
        profile = tmp / f"hybridml-{kind}.yaml"
        target = bed.target(known, tracking_via="runner") if stock else bed.target(known)
        profile.write_text(json.dumps({"tracking_uri": server.url, "targets": {"onprem": target}}))
        homes = {v: tmp / f"ssh-home-{kind}-{v}" for v in ("session", "per-command")}
        env = {**os.environ, "HML_HOME": str(homes["session"]), "HML_CONFIG": str(profile)}
        alone = {**env, "HML_HOME": str(homes["per-command"]), "HML_SSH_SESSION": "0"}
        host = bed.hosts[0]
        ssh = plain_ssh(host, known)
        work = tmp / f"work-{kind}"
        work.mkdir()
        (work / "job.yaml").write_text(json.dumps({"name": "bench", "run": SSH_JOB}))
        submit = [HML, "submit", str(work / "job.yaml"), "--target", "onprem"]
        subprocess.run(submit, env=env, check=True, capture_output=True)  # warm: code staged once
        subprocess.run([HML, "agent", "start"], env=env, check=True, capture_output=True)
        logins = (Path(pwd.getpwnam(host.user).pw_dir) / ".hml-logins") if stock else None

        def counted(fn: Callable[[], float]) -> tuple[float, float]:
            """fn's median, and the sessions the host saw per call (stock bed), or nan."""
            before = logins.read_text().count("login") if logins else 0
            value = median_of(fn, repeat)
            after = logins.read_text().count("login") if logins else 0
            return value, (after - before) / repeat if logins else float("nan")

        plain_first, plain_seen = counted(lambda: first_line_latency([*ssh, SSH_JOB], "line-a"))
        hml_first, hml_seen = counted(lambda: first_line_latency(submit, "line-a", env=env))
        alone_first, alone_seen = counted(lambda: first_line_latency(submit, "line-a", env=alone))
        plain_total = wall([*ssh, SSH_JOB], repeat=repeat)
        hml_total = wall(submit, repeat=repeat, env=env)
        alone_total = wall(submit, repeat=repeat, env=alone)
        rows = [
            (f"ssh ({kind}): submit to first remote line (goal <= 2x)", hml_first, plain_first),
            ("  the same, a session per command (HML_SSH_SESSION=0)", alone_first, plain_first),
            (f"ssh ({kind}): whole job {SSH_JOB!r} (goal <= 1.1x)", hml_total, plain_total),
            ("  the same, a session per command (HML_SSH_SESSION=0)", alone_total, plain_total),
        ]
        if cold:
            cold_env = {**env, **COLD}
            rows.insert(
                1,
                (
                    "  the same, agent off",
                    median_of(lambda: first_line_latency(submit, "line-a", env=cold_env), repeat),
                    plain_first,
                ),
            )
            rows.append(("  the same, agent off", wall(submit, repeat=repeat, env=cold_env), plain_total))
        notes.append(
            f"ssh ({kind}): SSH sessions per submit (the runner's count): "
            f"{sessions_per_submit(homes['session']):g} with the session helper, "
            f"{sessions_per_submit(homes['per-command']):g} with a session per command"
        )
        if stock:
            notes.append(
                f"ssh ({kind}): sessions the host saw per call: plain ssh {plain_seen:g}, "
                f"hml {hml_seen:g}, hml with a session per command {alone_seen:g}"
            )
    finally:
        bed.stop()
        server.stop()
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-ssh", action="store_true")
    parser.add_argument("--skip-local", action="store_true", help="the ssh figures only")
    parser.add_argument(
        "--bed",
        choices=("both", "fast", "stock"),
        default="both",
        help="fast: the test bed's sshd (PAM off, no start-up files); stock: Debian's sshd with PAM "
        "and a login whose ~/.bashrc takes ~150 ms; both (default)",
    )
    parser.add_argument("--cold", action="store_true", help="the ssh figures with HML_AGENT=0 too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runtime = tmp / "xdg"  # this run's own agent, stopped at the end
        runtime.mkdir(mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        os.environ.pop("HML_AGENT", None)
        try:
            rows, notes = figures(tmp, args)
        finally:
            subprocess.run([HML, "agent", "stop"], capture_output=True)
        report("dispatch: hml against its baseline in the same run (medians)", rows)
        print("\n".join(notes))
        if args.skip_local:
            return
        list_env = {**os.environ, "HML_HOME": str(tmp / "list-home")}
        for name, argv in (("--help", ["--help"]), ("status", ["status", RUN_ID]), ("list", ["list"])):
            print(
                f"heavy modules imported by hml {name} (agent off): {heavy_imports(argv, list_env) or 'none'}"
            )


RUN_ID = "0499" + "0" * 28


def figures(tmp: Path, args: argparse.Namespace) -> tuple[list[tuple[str, float, float]], list[str]]:
    rows: list[tuple[str, float, float]] = []
    notes: list[str] = []
    for stock in (False, True):
        if args.skip_ssh or args.bed == ("fast" if stock else "stock"):
            continue
        got, said = ssh_figures(tmp, args.repeat, stock, args.cold)
        rows += got
        notes += said
    if args.skip_local:
        return rows, notes

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
    return rows, notes


if __name__ == "__main__":
    main()
