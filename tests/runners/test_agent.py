"""The warm agent (runners/cli/agent.py): commands forked from it behave as the cold ``hml`` does.

Each test gets its own agent (its own XDG_RUNTIME_DIR), started and stopped by the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.runners.helpers import HML, hml, status, wait_status, write_job

pytestmark = pytest.mark.server  # hml starts the warm agent, a server on a socket


def _children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _parent(pid: int) -> int:
    return int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())[1])


def _agent_state() -> dict:
    out = hml("agent", "--output", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("HML_AGENT", raising=False)
    started = hml("agent", "start")
    assert started.returncode == 0, started.stderr
    pid = _agent_state()["pid"]
    yield pid
    hml("agent", "stop")


def _record(run_id: str) -> dict:
    return json.loads((Path(os.environ["HML_HOME"]) / "runs" / run_id / "record.json").read_text())


def test_submit_runs_in_a_worker_and_the_supervisor_is_forked_by_the_agent(agent, tmp_path):
    job = write_job(tmp_path / "w", run="echo from-the-job; sleep 3")
    out = hml("submit", "w/job.yaml", "--detach", "--output", "json", cwd=tmp_path)  # relative: the cwd went
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    assert job.exists()
    wait_status(run_id, {"RUNNING"})
    supervisor = _record(run_id)["supervisor_pid"]
    assert _parent(supervisor) == agent  # forked, not a new interpreter
    assert wait_status(run_id, {"FINISHED"})["exit_code"] == 0
    assert "from-the-job" in hml("logs", run_id).stdout


def test_exit_codes_and_errors_are_the_cold_paths(agent, tmp_path):
    failing = write_job(tmp_path / "f", run="echo failing; exit 3")
    out = hml("submit", str(failing))
    assert out.returncode == 1
    assert "failing" in out.stdout and "FAILED" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrun: echo\nresources: {gpus: -1}\n")
    out = hml("submit", str(bad))
    assert out.returncode == 2
    assert "resources.gpus" in out.stderr and "Traceback" not in out.stderr
    assert hml("status", "nosuchrun").returncode == 2
    assert hml("--help").returncode == 0
    assert hml("no-such-command").returncode == 2


def _following(tmp_path: Path, run: str) -> tuple[subprocess.Popen, str]:
    """``hml submit`` following a job, once the job's first line ``started`` came; its run id."""
    job = write_job(tmp_path / "w", run=run)
    proc = subprocess.Popen(
        [HML, "submit", str(job)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("started"):
            break
    return proc, next(d.name for d in (Path(os.environ["HML_HOME"]) / "runs").iterdir())


def test_ctrl_c_detaches_and_the_run_goes_on(agent, tmp_path):
    proc, run_id = _following(tmp_path, "echo started; sleep 4; echo done")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "detached; the job goes on" in err
    assert wait_status(run_id, {"FINISHED", "FAILED", "KILLED"})["status"] == "FINISHED"


def test_a_killed_caller_leaves_the_run_and_no_worker(agent, tmp_path):
    proc, run_id = _following(tmp_path, "echo started; sleep 3; echo done")
    proc.kill()
    proc.wait()
    supervisor = _record(run_id)["supervisor_pid"]
    deadline = time.monotonic() + 10
    while set(_children(agent)) - {supervisor} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert set(_children(agent)) - {supervisor} == set(), "the worker of the killed caller is left"
    assert wait_status(run_id, {"FINISHED", "FAILED", "KILLED"})["status"] == "FINISHED"
    assert "done" in hml("logs", run_id).stdout


def test_a_dead_supervisor_is_restarted_by_the_agent(agent, tmp_path):
    job = write_job(tmp_path / "w", run="sleep 3; echo after-restart")
    run_id = json.loads(hml("submit", str(job), "-d", "-o", "json").stdout)["run_id"]
    wait_status(run_id, {"RUNNING"})
    os.kill(_record(run_id)["supervisor_pid"], signal.SIGKILL)
    time.sleep(0.5)
    status(run_id)  # finds the supervisor gone and has the agent start a new one
    assert _parent(_record(run_id)["supervisor_pid"]) == agent
    assert wait_status(run_id, {"FINISHED", "FAILED", "KILLED"})["status"] == "FINISHED"
    assert hml("logs", run_id).stdout.count("after-restart") == 1


def test_the_agent_leaves_when_idle(tmp_path, monkeypatch):
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("HML_AGENT_IDLE_S", "3")  # long enough for the next hml to see it on a loaded machine
    assert hml("agent", "start").returncode == 0
    socket = Path(_agent_state()["socket"])
    assert socket.exists()
    deadline = time.monotonic() + 20
    while _agent_state()["running"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _agent_state()["running"]
    assert not socket.exists()


def test_off_switch_and_unsafe_directory(tmp_path, monkeypatch):
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    job = write_job(tmp_path / "w", run="echo cold")
    out = hml("submit", str(job), env={"HML_AGENT": "0"})
    assert out.returncode == 0 and "cold" in out.stdout
    time.sleep(1)
    assert not _agent_state()["running"]  # HML_AGENT=0 started none
    (runtime / "hml").chmod(0o777)  # another user could plant a socket here: never used
    out = hml("submit", str(job))
    assert out.returncode == 0 and "cold" in out.stdout
    assert "the agent is not used" in out.stderr and "0700" in out.stderr


def test_an_agent_that_ends_at_start_is_reported_at_once(tmp_path, monkeypatch):
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    begun = time.monotonic()
    out = hml("agent", "start", env={"HML_AGENT_IDLE_S": "soon"})
    assert out.returncode == 2 and time.monotonic() - begun < 20, out.stderr
    assert "the agent ended at start: hml agent: HML_AGENT_IDLE_S must be a number of seconds" in out.stderr
    assert "Traceback" not in out.stderr
    assert not _agent_state()["running"]


def test_the_agent_is_an_isolated_interpreter(agent):
    """``-I``: no working directory, script directory or PYTHON* variable can change its imports
    (tests/security/test_isolation.py plants packages where a victim runs hml)."""
    argv = Path(f"/proc/{agent}/cmdline").read_bytes().split(b"\0")
    assert argv[1:4] == [b"-I", b"-m", b"runners.cli.agent"], argv
