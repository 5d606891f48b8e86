"""A job's tracking relay, attacked by another account on the same machine.

The victim runs a job on the local target that logs to the embedded default's local server
through its relay and keeps running. The attacker, a second real OS user, finds the relay's
port the way anyone can (the kernel lists every listening socket and its owner in
/proc/net/tcp), then tries it without the job's token and with a guessed one, tries MLflow's
user management through it, and asks its status. Then the victim stops the local server
(``hml ui --stop``) mid-job and the attacker binds the freed port: the relay must send that
squatter nothing, neither a write nor an ``Authorization`` header, and once the port is
the victim's server's again every metric lands exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from tests.security.users import User

LOCAL = {"HML_LOCAL_SERVER": "1"}
TEAM = {"MLFLOW_TRACKING_USERNAME": "victim", "MLFLOW_TRACKING_PASSWORD": "team-server-password-31337"}
"""The victim's credentials for a team server, in the shell that runs hml: they belong to that
server, and must reach neither a job that tracks to the embedded default nor a squatter."""

JOB = textwrap.dedent("""
    import json, os, time
    import mlflow

    with open("env.json", "w") as f:
        json.dump({k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}, f)
    mlflow.log_param("started", "yes")
    step = 0
    while not os.path.exists("done"):
        mlflow.log_metric("m", step, step=step)
        print("step", step, flush=True)
        step += 1
        time.sleep(0.3)
    mlflow.set_tag("last", str(step - 1))
""")

PROBE = textwrap.dedent("""
    import json, sys, urllib.error, urllib.request

    def listening(uid):
        ports = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in open(table).readlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[7]) == uid:
                    ports.append(int(f[1].split(":")[1], 16))
        return sorted(set(ports))

    def ask(port, method, path, headers, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return [r.status, r.read().decode(errors="replace")]
        except urllib.error.HTTPError as e:
            return [e.code, e.read().decode(errors="replace")]
        except OSError as e:
            return [0, str(e)]

    port = int(sys.argv[2])
    basic = {"Authorization": "Basic YWRtaW46cGFzc3dvcmQxMjM0"}  # admin:password1234, MLflow's default
    user = json.dumps({"username": "eve", "password": "eve-password-1"}).encode()
    print(json.dumps({
        "found": port in listening(int(sys.argv[1])),
        "status": ask(port, "GET", "/_relay/status", {}),
        "status_guessed": ask(port, "GET", "/_relay/status", {"Authorization": "Bearer guess-0123456789abc"}),
        "runs": ask(port, "POST", "/api/2.0/mlflow/runs/search", {"Content-Type": "application/json"}, b"{}"),
        "create_user": ask(port, "POST", "/api/2.0/mlflow/users/create", basic, user),
        "create_user_guessed": ask(port, "POST", "/api/2.0/mlflow/users/create",
                                   {"Authorization": "Bearer guess-0123456789abc"}, user),
    }))
""")

SQUAT = textwrap.dedent("""
    import json, socket, sys, time
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the server's TIME_WAITs are no owner
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(16)
    s.settimeout(0.2)
    print("listening", flush=True)
    conns, got, until = [], b"", time.monotonic() + float(sys.argv[2])
    while time.monotonic() < until:
        try:
            c, _ = s.accept()
            c.setblocking(False)
            conns.append(c)
        except socket.timeout:
            pass
        for c in conns:
            try:
                got += c.recv(65536)
            except (BlockingIOError, OSError):
                pass
    print(json.dumps({"connections": len(conns), "received": got.decode(errors="replace")}), flush=True)
""")


def _victim_hml(victim: User, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return victim.hml(*args, cwd=cwd, env={**LOCAL, **TEAM}, timeout=300)


def _wait(what: str, check, timeout: float = 180):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.3)
    return got


def _steps(victim: User, run_id: str) -> dict:
    """The run as the victim's own store holds it (read as the victim: the store is theirs)."""
    code = textwrap.dedent("""
        import json, os, sys
        from mlflow import MlflowClient
        c = MlflowClient("sqlite:///" + os.environ["HML_HOME"] + "/mlflow.db")
        run = c.get_run(sys.argv[1])
        steps = [m.step for m in c.get_metric_history(sys.argv[1], "m")]
        print(json.dumps({"status": run.info.status, "tags": run.data.tags, "steps": steps}))
    """)
    out = victim.python(code, run_id, timeout=180)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_another_user_gets_nothing_from_a_jobs_relay(victim: User, attacker: User) -> None:
    out = _victim_hml(victim, "ui", "-o", "json")
    assert out.returncode == 0, out.stderr
    server_port = int(json.loads(out.stdout)["url"].rsplit(":", 1)[1])
    work = victim.work / "job"
    victim.run(["mkdir", "-p", str(work)])
    victim.run(["tee", str(work / "train.py")], input=JOB)
    victim.run(["tee", str(work / "job.yaml")], input=f"name: longjob\nrun: {sys.executable} train.py\n")
    out = _victim_hml(victim, "submit", "job.yaml", "--detach", "-o", "json", cwd=work)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]
    attempt = Path(victim.env["HML_HOME"]) / "runs" / run_id / "attempt-0"
    relay_port = _wait("the relay's start", lambda: _relay_port(attempt))
    _wait("the job's first steps", lambda: _logged(attempt, "step 3"))

    # the team server's credentials are nowhere in a job that tracks to the embedded default
    env = json.loads((work / "env.json").read_text())
    assert "MLFLOW_TRACKING_USERNAME" not in env and "MLFLOW_TRACKING_PASSWORD" not in env
    assert env["MLFLOW_TRACKING_TOKEN"] not in TEAM.values() and len(env["MLFLOW_TRACKING_TOKEN"]) >= 32
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{relay_port}"

    probe = attacker.python(PROBE, str(victim.uid), str(relay_port))
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout)
    assert got["found"], "the relay's port is not listed under the victim's uid"
    for name in ("status", "status_guessed", "runs", "create_user", "create_user_guessed"):
        status, body = got[name]
        assert status == 401 and "UNAUTHENTICATED" in body, (name, got[name])
        assert "pending" not in body and run_id not in body, (name, body)  # it tells nothing

    # the squatter: the victim's server stops mid-job, the attacker takes its port
    assert _victim_hml(victim, "ui", "--stop").returncode == 0
    squat = subprocess.Popen(
        ["runuser", "-u", attacker.name, "--", sys.executable, "-c", SQUAT, str(server_port), "12"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert squat.stdout is not None
    assert squat.stdout.readline().strip() == "listening", "the attacker could not bind the freed port"
    squatted = json.loads(squat.stdout.readline())
    squat.wait(timeout=30)
    assert squatted["connections"] >= 1, "the relay never tried the port: the test proves nothing"
    assert squatted["received"] == "", squatted  # no write, no Authorization: not a byte
    assert "served by another user" in (attempt / "relay.log").read_text()

    # the victim's server comes back on its port; every step lands once
    out = _victim_hml(victim, "ui", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["url"].endswith(f":{server_port}")
    victim.run(["touch", str(work / "done")])
    _wait("the run's end", lambda: _steps(victim, run_id)["status"] == "FINISHED", timeout=300)
    run = _steps(victim, run_id)
    last = int(run["tags"]["last"])
    assert Counter(run["steps"]) == Counter(range(last + 1)), "a step is missing or twice"


def _relay_port(attempt: Path) -> int | None:
    try:
        return int(json.loads((attempt / "relay.out").read_text())["port"])
    except (OSError, ValueError, KeyError):
        return None


def _logged(attempt: Path, text: str) -> bool:
    try:
        return text in (attempt / "output.log").read_text()
    except OSError:
        return False
