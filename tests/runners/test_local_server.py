"""The embedded default's local tracking server (runners/tracking/local_server.py): started by the first
submit in the background, used over REST by the next ones, stopped when idle or asked, and never
needed: without it every path writes the SQLite store directly."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from runners.tracking import local_server
from tests.runners.helpers import (
    assert_system_metrics,
    hml,
    logging_job,
    submit_json,
    wait_finalized,
    wait_log,
    write_job,
)

pytestmark = pytest.mark.server  # hml starts the local tracking server

ON = {"HML_LOCAL_SERVER": "1"}
PRINT_URI = "import os, mlflow; print('uri', os.environ['MLFLOW_TRACKING_URI']); mlflow.log_metric('m', 7)"


def _client(hml_home: Path):  # noqa: ANN202 - mlflow is imported lazily
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{hml_home}/mlflow.db")


def _wait_served(timeout: float = 180) -> dict:
    """The state of a server that answers, started by someone else."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = local_server.running()
        if state is not None and local_server.healthy(local_server.url_of(state)):
            return state
        time.sleep(0.3)
    raise AssertionError(f"no healthy local server: {(Path(os.environ['HML_HOME']) / local_server.LOG)}")


def _wait_gone(pids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of an exited child of this test process counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _printed_uri(run_id: str) -> str:
    return next(ln.split()[1] for ln in hml("logs", run_id).stdout.splitlines() if ln.startswith("uri "))


def test_first_submit_starts_it_and_later_submits_go_through_it(tmp_path, hml_home):
    job = write_job(tmp_path / "w", run=f'{sys.executable} -c "{PRINT_URI}"', params={"lr": 0.5})
    store = f"sqlite:///{hml_home}/mlflow.db"
    first, out = submit_json(str(job), cwd=tmp_path, env=ON)
    assert out.returncode == 0, out.stderr
    assert first["status"] == "FINISHED" and first["tracking_uri"] == store
    state = _wait_served()  # started in the background by that submit, which its job waited for
    first_via = _printed_uri(first["run_id"])
    assert first_via.startswith("http://127.0.0.1:") and first_via != local_server.url_of(state), (
        "the first run's job did not log through its relay"
    )
    assert state["store"] == store

    second, out = submit_json(str(job), cwd=tmp_path, env=ON)
    assert out.returncode == 0, out.stderr
    assert second["tracking_uri"] == store, "the record keeps the canonical store URI"
    via = _printed_uri(second["run_id"])
    assert via.startswith("http://127.0.0.1:") and via != local_server.url_of(state), "not the job's relay"
    served_log = (hml_home / local_server.LOG).read_text()
    assert "POST /api/2.0/mlflow/runs/create" in served_log, "submit did not create the run over REST"

    client = _client(hml_home)
    for run_id in (first["run_id"], second["run_id"]):
        run = wait_finalized(client, run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["lr"] == "0.5" and run.data.metrics["m"] == 7
        assert run.data.tags["hml.exit_code"] == "0"
        assert run.info.artifact_uri.startswith((hml_home / "artifacts").as_uri())
        assert {a.path for a in client.list_artifacts(run_id, "hml")} == {"hml/job.yaml", "hml/output.log"}
    loaded = yaml.safe_load(
        (hml_home / "artifacts" / second["run_id"] / "artifacts/hml/job.yaml").read_text()
    )
    assert loaded["params"] == {"lr": 0.5}
    assert len({client.get_run(r).info.experiment_id for r in (first["run_id"], second["run_id"])}) == 1


def test_the_first_submit_on_a_fresh_home_logs_through_its_relay_with_system_metrics(tmp_path, hml_home):
    """Issue 26: no "warm only" difference. The first run on a new store used to log straight to
    SQLite (the server was not up yet): no relay, no outage protection, no system metrics."""
    assert not (hml_home / "mlflow.db").exists()
    code = f"{PRINT_URI}; import time; time.sleep(3)"
    job = write_job(
        tmp_path / "w", run=f'{sys.executable} -c "{code}"', envs={"TRACKING_SYSTEM_METRICS_S": 0.5}
    )
    summary, out = submit_json(str(job), cwd=tmp_path, env=ON)
    assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr
    via = _printed_uri(summary["run_id"])
    assert via.startswith("http://127.0.0.1:") and via != local_server.url_of(_wait_served()), via
    client = _client(hml_home)
    run = wait_finalized(client, summary["run_id"])
    assert run.data.metrics["m"] == 7
    assert_system_metrics(client, summary["run_id"], at_least=3)


@pytest.mark.parametrize("drain_s", ["0", "3600"], ids=["journal-replayed-by-runner", "relay-waits"])
def test_server_killed_mid_job_loses_no_metric(tmp_path, hml_home, drain_s):
    """The server dies while the job logs: its relay journals; the runner starts the server again
    (on the same port) and every record lands once, whether the relay or the runner sends it."""
    out = hml("ui", "-o", "json", env=ON)
    assert out.returncode == 0, out.stderr
    state = local_server.read_state()
    assert state is not None
    steps = 20
    job = logging_job(
        tmp_path / "w", steps=steps, pause=0.05, gate=True, envs={"TRACKING_RELAY_DRAIN_S": drain_s}
    )
    summary, out = submit_json(str(job), "--detach", cwd=tmp_path, env=ON)
    assert out.returncode == 0, out.stderr
    run_id = summary["run_id"]
    client = _client(hml_home)
    deadline = time.monotonic() + 120
    while "steps" not in client.get_run(run_id).data.params:
        assert time.monotonic() < deadline, hml("logs", run_id).stdout
        time.sleep(0.2)
    os.kill(state["pid"], signal.SIGKILL)
    os.killpg(state["server_pid"], signal.SIGKILL)
    _wait_gone([state["pid"], state["server_pid"]])
    (tmp_path / "w" / "go").touch()
    wait_log(run_id, f"step {steps - 1}")
    run = wait_finalized(client, run_id, timeout=240)
    assert run.info.status == "FINISHED"
    assert run.data.params["steps"] == str(steps) and run.data.tags["done"] == "yes"
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(steps)), "a step is missing or twice"
    assert local_server.read_state()["port"] == state["port"], "restarted on another port"


def test_ui_starts_and_stops_it(tmp_path, hml_home):
    out = hml("ui", "-o", "json", env=ON)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    state = local_server.running()
    assert state is not None and shown["url"] == local_server.url_of(state)
    assert shown["tracking_uri"] == f"sqlite:///{hml_home}/mlflow.db"
    assert local_server.healthy(shown["url"])
    again = hml("ui", env=ON)  # the one running is reused; text output: the browser's address
    assert again.returncode == 0 and again.stdout.strip() == shown["browser_url"]
    assert shown["browser_url"] == f"{shown['url']}/hml-login?token={local_server.token()}"
    assert local_server.read_state()["pid"] == state["pid"]

    stopped = hml("ui", "--stop", "-o", "json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout) == {"stopped": True}
    _wait_gone([state["pid"], state["server_pid"]])
    assert not local_server.healthy(shown["url"], timeout=2)
    assert "pid" not in local_server.read_state()
    assert hml("ui", "--stop").stdout.strip() == "no local tracking server was running"


def test_ui_refuses_a_store_it_cannot_serve(tmp_path):
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(yaml.safe_dump({"tracking_uri": f"sqlite:///{tmp_path}/other.db"}))
    out = hml("ui", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 2
    assert "tracking_uri: hml ui serves" in out.stderr and "Traceback" not in out.stderr


def test_idle_server_stops_itself(tmp_path, hml_home):
    out = hml("ui", env={**ON, "HML_LOCAL_SERVER_IDLE_S": "2"})
    assert out.returncode == 0, out.stderr
    state = local_server.read_state()
    _wait_gone([state["pid"], state["server_pid"]], timeout=90)
    assert "idle for" in (hml_home / local_server.LOG).read_text()
    assert local_server.running() is None and local_server.read_state()["port"] == state["port"]


def test_switched_off_no_server_starts(tmp_path, hml_home):
    job = write_job(tmp_path / "w", run="true")
    summary, out = submit_json(str(job), cwd=tmp_path)  # HML_LOCAL_SERVER=0: the tests' default
    assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(yaml.safe_dump({"local_server": False}))
    summary, out = submit_json(str(job), env={**ON, "HML_CONFIG": str(profile)})
    assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr
    assert not (hml_home / local_server.STATE).exists() and not (hml_home / local_server.LOG).exists()

    profile.write_text(yaml.safe_dump({"local_server": "sometimes"}))
    bad = hml("submit", str(job), env={"HML_CONFIG": str(profile)})
    assert bad.returncode == 2 and "local_server" in bad.stderr and "Traceback" not in bad.stderr
