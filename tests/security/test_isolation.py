"""What a victim's working directory holds cannot run code as the victim, nor steer their runs.

The realistic case: a directory every account may write (a shared scratch directory, mode
0777 or 1777, here made by the attacker), where the attacker plants Python packages named as
hml's own and its dependencies' (``runners``, ``hmlkit``, ``mlflow``, ``yaml``) and
``sitecustomize.py``, each leaving a marker file when imported, and a ``hybridml.yaml`` that
sends runs to the attacker's own listener. The victim then works there: submits (cold, and
through the warm agent), has a killed supervisor restarted by ``hml status``, starts ``hml
ui``. Every interpreter hml starts is isolated (``python -I``), so no marker appears and the
jobs succeed; the profile there is ignored with a warning, so the listener hears nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.security.users import BIN, User

PLANTED = ("runners", "hmlkit", "mlflow", "yaml")


@pytest.fixture
def shared(attacker: User) -> Iterator[Path]:
    """A directory the attacker made for everyone to write (as /tmp is): mode 0777."""
    path = Path(f"/tmp/hml-shared-{uuid.uuid4().hex[:8]}")
    made = attacker.run(["mkdir", "-m", "0777", str(path)])
    assert made.returncode == 0, made.stderr
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _plant(attacker: User, where: Path) -> None:
    """Packages and a sitecustomize that leave ``imported-<name>-<uid>`` when imported."""
    for name in (*PLANTED, "sitecustomize"):
        code = (
            "import os\n"
            f"open(os.path.join({str(where)!r}, 'imported-{name}-%d' % os.getuid()), 'w').close()\n"
        )
        target = f"{where}/{name}/__init__.py" if name in PLANTED else f"{where}/{name}.py"
        out = attacker.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", target], input=code)
        assert out.returncode == 0, out.stderr


def _markers(where: Path) -> list[str]:
    return sorted(p.name for p in where.glob("imported-*"))


def _victim_job(victim: User, where: Path, run: str) -> Path:
    job = where / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "isolated", "experiment": "isolation", "run": run}))
    os.chown(job, victim.uid, victim.gid)
    return job


def _record(victim: User, run_id: str) -> dict:
    return json.loads((victim.work / "hml-home" / "runs" / run_id / "record.json").read_text())


def _wait(victim: User, run_id: str, want: set[str], where: Path, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        out = victim.hml("status", run_id, "-o", "json", cwd=where, env={"HML_AGENT": "0"})
        assert out.returncode == 0, out.stderr
        state = json.loads(out.stdout)
        if state["status"] in want:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.5)


def test_nothing_planted_in_the_working_directory_is_imported(victim, attacker, shared):
    _plant(attacker, shared)
    _victim_job(victim, shared, "echo started; until [ -e gate ]; do sleep 0.2; done; echo isolated-ok")
    cold = {"HML_AGENT": "0"}
    out = victim.hml("submit", "job.yaml", "--detach", "-o", "json", cwd=shared, env=cold)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    _wait(victim, run_id, {"RUNNING"}, shared)
    os.kill(_record(victim, run_id)["supervisor_pid"], signal.SIGKILL)
    restarted = victim.hml("status", run_id, cwd=shared, env=cold)  # a new supervisor, from here
    assert restarted.returncode == 0, restarted.stderr
    (shared / "gate").touch()
    assert _wait(victim, run_id, {"FINISHED", "FAILED", "KILLED"}, shared)["status"] == "FINISHED"
    try:
        started = victim.hml("agent", "start", cwd=shared)
        assert started.returncode == 0, started.stderr
        warm = victim.hml("submit", "job.yaml", cwd=shared)  # a worker of the agent, in this directory
        assert warm.returncode == 0 and "isolated-ok" in warm.stdout, warm.stderr
        ui = victim.hml("ui", "-o", "json", cwd=shared, timeout=180)  # the local server and its watchdog
        assert ui.returncode == 0, ui.stderr
        assert json.loads(ui.stdout)["url"].startswith("http://127.0.0.1:")
    finally:
        victim.hml("agent", "stop")
        victim.hml("ui", "--stop")
    assert "isolated-ok" in victim.hml("logs", run_id, cwd=shared, env=cold).stdout
    assert _markers(shared) == []
    assert _plant_works(attacker, shared)


def _plant_works(attacker: User, where: Path) -> bool:
    """The planted modules do leave their marker when a Python that is not isolated imports
    them from that directory (the attack is real, the test can fail)."""
    code = "import runners, hmlkit, mlflow, yaml"
    out = attacker.run([str(BIN / "python"), "-c", code], cwd=where)
    assert out.returncode == 0, out.stderr
    return _markers(where) == sorted(f"imported-{n}-{attacker.uid}" for n in PLANTED)


LISTENER = """
import http.server, sys
class Record(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self._note()
    def do_POST(self):
        self._note()
    def _note(self):
        with open(sys.argv[1] + "/heard", "a") as fh:
            fh.write(self.command + " " + self.path + " " + str(dict(self.headers)) + "\\n")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")
server = http.server.HTTPServer(("127.0.0.1", 0), Record)
with open(sys.argv[1] + "/port.tmp", "w") as fh:
    fh.write(str(server.server_address[1]))
import os; os.rename(sys.argv[1] + "/port.tmp", sys.argv[1] + "/port")
server.serve_forever()
"""


@pytest.fixture
def listener(attacker: User) -> Iterator[str]:
    """The attacker's own 'tracking server': it notes every request it receives."""
    notes = attacker.work
    env = [f"{k}={v}" for k, v in attacker.env.items()]
    proc = subprocess.Popen(
        [
            "runuser",
            "-u",
            attacker.name,
            "--",
            "env",
            "-i",
            *env,
            str(BIN / "python"),
            "-c",
            LISTENER,
            str(notes),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (notes / "port").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the listener did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{(notes / 'port').read_text()}"
    finally:
        attacker.kill_all()
        proc.wait(timeout=10)


def test_a_planted_profile_sends_nothing_to_the_attacker(victim, attacker, shared, listener):
    planted = yaml.safe_dump({"tracking_uri": listener, "targets": {"local": {"kind": "local"}}})
    out = attacker.run(["sh", "-c", f"cat > {shared}/hybridml.yaml"], input=planted)
    assert out.returncode == 0, out.stderr
    _victim_job(victim, shared, "echo mine-alone")
    out = victim.hml("submit", "job.yaml", "-o", "json", cwd=shared, env={"HML_AGENT": "0"}, timeout=180)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["status"] == "FINISHED"
    assert summary["tracking_uri"] == f"sqlite:///{victim.work / 'hml-home' / 'mlflow.db'}"  # the default
    assert f"hml: warning: ignoring ./hybridml.yaml: {shared} belongs to {attacker.name}" in out.stderr
    assert "(move it, or pass --config)" in out.stderr
    victim.hml("ui", "--stop")
    assert not (attacker.work / "heard").exists()
    again = victim.hml("--config", f"{shared}/hybridml.yaml", "targets", cwd=victim.work)
    assert again.returncode == 2 and f"belongs to {attacker.name}" in again.stderr
    assert not (attacker.work / "heard").exists()


def test_a_profile_root_owns_is_trusted(victim):
    """Root commands every account anyway: a root-owned profile in a root-owned directory
    (a machine-wide one an admin installed) is read, as the user's own would be."""
    where = Path(f"/tmp/hml-admin-{uuid.uuid4().hex[:8]}")
    where.mkdir(mode=0o755)
    try:
        (where / "hybridml.yaml").write_text(yaml.safe_dump({"tracking_uri": "http://127.0.0.1:9/admins"}))
        (where / "hybridml.yaml").chmod(0o644)
        out = victim.hml("targets", "-o", "json", cwd=where, env={"HML_AGENT": "0"})
        assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
        assert json.loads(out.stdout)["tracking_uri"] == "http://127.0.0.1:9/admins"
    finally:
        shutil.rmtree(where)
