"""The local target against a real MLflow server, and the embedded default store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import MlflowServer, free_port
from tests.runners.contract import BackendContract
from tests.runners.helpers import (
    assert_every_step_once,
    assert_system_metrics,
    hml,
    logging_job,
    status,
    submit_json,
    wait_finalized,
    wait_log,
    wait_param,
    wait_status,
    write_job,
)

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("mlflow", "torch", "boto3", "pulumi", "paramiko")


def local_profile(path: Path, tracking_uri: str) -> Path:
    path.write_text(yaml.safe_dump({"tracking_uri": tracking_uri, "targets": {"local": {"kind": "local"}}}))
    return path


class TestLocal(BackendContract):
    @pytest.fixture
    def target(self, tmp_path, mlflow_server):
        return local_profile(tmp_path / "hybridml.yaml", mlflow_server.url), "local"


def test_digits_example_trains_and_records_everything(tmp_path, mlflow_server):
    profile = local_profile(tmp_path / "hybridml.yaml", mlflow_server.url)
    job = ROOT / "examples" / "digits" / "job.yaml"
    summary, out = submit_json(str(job), "--set", "epochs=8", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    client = mlflow_server.client()
    run = wait_finalized(client, summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "8"
    assert run.data.metrics["test_accuracy"] >= 0.90
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(8))
    assert history[-1].value < history[0].value
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "checkpoints", "hml"} <= top
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert any(m.source_run_id == run.info.run_id for m in models), "no model logged"


def test_git_commit_of_the_workdir_is_tagged(tmp_path, mlflow_server):
    profile = local_profile(tmp_path / "hybridml.yaml", mlflow_server.url)
    work = tmp_path / "repo"
    job = write_job(work, run="true")
    git = ["git", "-C", str(work), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary, out = submit_json(str(job), env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    run = wait_finalized(mlflow_server.client(), summary["run_id"])
    assert run.data.tags["hml.git_commit"] == head == run.data.tags["mlflow.source.git.commit"]


def test_embedded_default_needs_no_server(tmp_path, hml_home):
    code = "import mlflow; mlflow.log_metric('m', 7)"
    job = write_job(tmp_path / "w", run=f'{sys.executable} -c "{code}"')
    summary, out = submit_json(str(job), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert summary["tracking_uri"] == f"sqlite:///{hml_home}/mlflow.db"
    from mlflow.tracking import MlflowClient

    run = wait_finalized(MlflowClient(summary["tracking_uri"]), summary["run_id"])
    assert run.data.metrics["m"] == 7
    assert run.info.artifact_uri.startswith((hml_home / "artifacts").as_uri())


def test_a_killed_supervisor_is_restarted_and_the_log_has_no_duplicates(tmp_path, mlflow_server):
    profile = local_profile(tmp_path / "hybridml.yaml", mlflow_server.url)
    job = write_job(tmp_path / "w", run="for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.5; done")
    summary, out = submit_json(str(job), "--detach", env={"HML_CONFIG": str(profile)})
    run_id = summary["run_id"]
    wait_status(run_id, {"RUNNING"})
    time.sleep(1.2)
    record = json.loads((Path(summary["log"]).parent / "record.json").read_text())
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"})  # status restarts it
    assert final["status"] == "FINISHED"
    lines = [ln for ln in hml("logs", run_id).stdout.splitlines() if ln.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 7)]
    assert wait_finalized(mlflow_server.client(), run_id).info.status == "FINISHED"


@pytest.mark.server  # starts its own MLflow server
def test_tracking_server_down_at_the_end_loses_nothing(tmp_path):
    server = MlflowServer(tmp_path / "srv", free_port()).start()
    try:
        profile = local_profile(tmp_path / "hybridml.yaml", server.url)
        code = (
            "import mlflow, time; mlflow.log_metric('before', 1); print('logged', flush=True); time.sleep(4)"
        )
        job = write_job(
            tmp_path / "w",
            run=f'{sys.executable} -c "{code}"',
            # the job's own client gives up quickly at exit, and its relay does not wait for the
            # server (its end-of-run record stays journaled): the runner's finalize must not give up
            envs={
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": 0,
                "MLFLOW_HTTP_REQUEST_TIMEOUT": 3,
                "TRACKING_RELAY_DRAIN_S": 0,
            },
        )
        summary, _ = submit_json(str(job), "--detach", env={"HML_CONFIG": str(profile)})
        run_id = summary["run_id"]
        deadline = time.monotonic() + 60
        while "logged" not in hml("logs", run_id).stdout and time.monotonic() < deadline:
            time.sleep(0.2)
        server.stop()
        final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=60)
        assert final["status"] == "FINISHED"
        # what is still to send, and why it is not home: the relay's own words
        syncing = [ln for ln in hml("logs", run_id).stdout.splitlines() if "hml: syncing" in ln]
        assert syncing and all("(upstream: " in ln for ln in syncing), syncing
        record_path = Path(final["log"]).parent / "record.json"
        assert json.loads(record_path.read_text())["finalized"] is False
        server.start()
        deadline = time.monotonic() + 90
        while not json.loads(record_path.read_text())["finalized"] and time.monotonic() < deadline:
            status(run_id)
            time.sleep(0.5)
        run = wait_finalized(server.client(), run_id)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["before"] == 1
        assert run.data.tags["hml.exit_code"] == "0"
    finally:
        server.stop()


@pytest.mark.parametrize("command", [["--help"], ["status", "{run_id}"], ["logs", "{run_id}"]])
def test_fast_commands_import_no_heavy_library(tmp_path, command):
    job = write_job(tmp_path / "w", run="echo hi")
    summary, out = submit_json(str(job), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    args = [a.format(run_id=summary["run_id"]) for a in command]
    probe = (
        f"import sys; from runners.cli import app; rc = app.run({args!r}); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)"
    )
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().splitlines()[-1] == "[]"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (runs on GPU machines, not in CI)")
def test_digits_on_a_gpu(tmp_path, mlflow_server):
    profile = local_profile(tmp_path / "hybridml.yaml", mlflow_server.url)
    job = ROOT / "examples" / "digits" / "job.yaml"
    summary, out = submit_json(
        str(job), "--set", "resources.gpus=1", "--set", "epochs=5", env={"HML_CONFIG": str(profile)}
    )
    assert out.returncode == 0, out.stderr
    run = wait_finalized(mlflow_server.client(), summary["run_id"])
    assert run.data.params["device"] == "cuda"
    assert run.data.metrics["test_accuracy"] >= 0.9


@pytest.mark.server  # starts its own MLflow server
def test_tracking_server_down_for_30s_mid_job_loses_no_metric(tmp_path):
    """Issue 12's outage: the server stopped for 30 s in the middle of a training loop and
    restarted on the same store; every step lands exactly once, and the job never waited."""
    server = MlflowServer(tmp_path / "srv", free_port()).start()
    try:
        profile = local_profile(tmp_path / "hybridml.yaml", server.url)
        job = logging_job(tmp_path / "w", steps=200, pause=0.2, envs={"TRACKING_SYSTEM_METRICS_S": "1"})
        summary, _ = submit_json(str(job), "--detach", env={"HML_CONFIG": str(profile)})
        run_id = summary["run_id"]
        wait_log(run_id, "step 5")
        server.stop()
        time.sleep(30)
        during = hml("logs", run_id).stdout
        assert "step 199" not in during, "the outage did not fall mid-job"
        assert "step 60" in during, "the job was held up by the outage"
        server.start()
        final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=180)
        assert final["status"] == "FINISHED", hml("logs", run_id).stdout
        assert_every_step_once(server, run_id, 200)
        assert_system_metrics(server.client(), run_id, at_least=30)  # samples journaled mid-outage too
    finally:
        server.stop()


@pytest.mark.server  # starts its own MLflow server
def test_status_shows_syncing_until_every_record_is_home(tmp_path):
    """A job that ends while the server is down is not over until its journal drained:
    ``hml status`` says RUNNING, syncing N records, and turns FINISHED only after the restart."""
    server = MlflowServer(tmp_path / "srv", free_port()).start()
    try:
        profile = local_profile(tmp_path / "hybridml.yaml", server.url)
        job = logging_job(tmp_path / "w", steps=30, pause=0.05, gate=True)
        summary, _ = submit_json(str(job), "--detach", env={"HML_CONFIG": str(profile)})
        run_id = summary["run_id"]
        wait_param(server, run_id, "steps")
        server.stop()
        (tmp_path / "w" / "go").touch()
        deadline = time.monotonic() + 60
        while not (got := status(run_id))["reason"].startswith("syncing"):
            assert time.monotonic() < deadline and got["status"] == "RUNNING", got
            time.sleep(0.3)
        assert got["status"] == "RUNNING"
        assert got["reason"].endswith("records to the tracking server")
        assert int(got["reason"].split()[1]) >= 30, got  # 30 steps and the tag
        time.sleep(2)
        assert status(run_id)["status"] == "RUNNING", "the run ended with its records away"
        server.start()
        final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=120)
        assert final["status"] == "FINISHED", hml("logs", run_id).stdout
        assert "syncing" in hml("logs", run_id).stdout
        assert_every_step_once(server, run_id, 30)
    finally:
        server.stop()


def test_the_placement_reason_says_why_earlier_targets_were_passed_over(tmp_path, mlflow_server):
    """``--target auto``: the run's tag tells what the dry run tells, the skipped targets too."""
    closed = free_port()  # nothing listens: the SSH target cannot be reached
    far = {"kind": "ssh", "hosts": [{"address": "127.0.0.1", "port": closed, "user": "hml"}]}
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "tracking_uri": mlflow_server.url,
                "placement": ["far", "here"],
                "targets": {
                    "far": {**far, "known_hosts": str(tmp_path / "known_hosts")},
                    "here": {"kind": "local"},
                },
            }
        )
    )
    job = write_job(tmp_path / "w", run="echo placed")
    summary, out = submit_json(str(job), "--target", "auto", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0 and summary["target"] == "here", out.stderr
    reason = wait_finalized(mlflow_server.client(), summary["run_id"]).data.tags["hml.placement_reason"]
    first, _, skipped = reason.partition("; not taken: ")
    assert first == "the first in placement order with room now", reason
    assert skipped.startswith("far: cannot run it: target 'far': ") and str(closed) in skipped, reason
