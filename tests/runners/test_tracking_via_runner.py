"""``tracking_via: runner`` on the ssh target, with a host that cannot reach the tracking server
(and on the aws target, whose bed's instances could reach it: see that test).

How the host is cut off, for real: its sshd lives in its own network namespace
(``start_bed(own_network=True)`` in tests/sshbed.py), joined to this machine by one veth pair
and nothing else. The MLflow server listens on this machine's 127.0.0.1; inside the namespace
127.0.0.1 is the host's own loopback, where nothing listens, and the server does not listen on
the veth address either. The test first shows, from inside the namespace, that the server's
address refuses; the job can then only reach it through the runner's SSH connection.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runners.helpers import (
    assert_every_step_once,
    assert_system_metrics,
    hml,
    logging_job,
    status,
    submit_json,
    wait_log,
    wait_status,
)
from tests.runners.test_aws import aws_profile, no_leak  # noqa: F401  (a fixture)
from tests.runners.test_ssh import record_of, ssh_profile
from tests.sshbed import SshBed, start_bed


@pytest.fixture(scope="module")
def cut_off_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshBed]:
    bed = start_bed(tmp_path_factory.mktemp("cutbed"), 1, own_network=True)
    try:
        yield bed
    finally:
        bed.stop()


def test_a_host_that_cannot_reach_the_server_logs_through_the_runner(tmp_path, cut_off_bed, mlflow_server):
    host = cut_off_bed.hosts[0]
    probe = f"import socket; socket.create_connection(('127.0.0.1', {mlflow_server.port}), timeout=3)"
    inside = subprocess.run(
        ["ip", "netns", "exec", host.netns, sys.executable, "-c", probe], capture_output=True, text=True
    )
    assert inside.returncode != 0 and "ConnectionRefusedError" in inside.stderr, "the host reaches the server"
    with socket.create_connection(("127.0.0.1", mlflow_server.port), timeout=3):
        pass  # while the runner does

    profile = ssh_profile(tmp_path, cut_off_bed, mlflow_server.url, tracking_via="runner")
    env = {"HML_CONFIG": str(profile)}
    job = logging_job(tmp_path / "w", steps=60, pause=0.1, envs={"TRACKING_SYSTEM_METRICS_S": "1"})
    summary, _ = submit_json(str(job), "--target", "onprem", "--detach", env=env)
    run_id = summary["run_id"]
    wait_log(run_id, "step 5", timeout=120)

    # the runner goes away mid-job: the forward closes with its connection, the relay journals
    os.kill(record_of(run_id)["supervisor_pid"], signal.SIGKILL)
    time.sleep(4)
    exec_dir = host.remote_root / "runs" / run_id / "attempt-0" / "node-0"
    assert "journaling writes" in (exec_dir / "relay.log").read_text(), "the relay never lost its upstream"

    # the next contact (hml status restarts the supervisor) opens the forward again; the relay replays
    status(run_id, env=env)
    final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=180, env=env)
    assert final["status"] == "FINISHED", hml("logs", run_id).stdout
    assert_every_step_once(mlflow_server, run_id, 60)
    assert_system_metrics(mlflow_server.client(), run_id)
    assert not (Path(exec_dir) / "syncing").exists()


@pytest.mark.usefixtures("no_leak")
def test_an_aws_instance_logs_through_the_runner_too(tmp_path, aws_bed, mlflow_server):
    """The same forward on the aws target. The bed's instances are sshd hosts on this machine's
    loopback, so they could reach the server themselves; what this shows is that the relay's
    upstream is the forwarded port the record names, and every step still lands once."""
    env = {"HML_CONFIG": str(aws_profile(tmp_path, aws_bed, mlflow_server.url, tracking_via="runner"))}
    job = logging_job(tmp_path / "w", steps=20, pause=0.05)
    summary, out = submit_json(str(job), "--target", "cloud", env=env, timeout=600)
    assert summary["status"] == "FINISHED", out.stderr + hml("logs", summary["run_id"]).stdout
    tracking_uri, port = record_of(summary["run_id"])["handle"]["nodes"][0]["forward"]
    assert tracking_uri == mlflow_server.url and port > 0
    assert_every_step_once(mlflow_server, summary["run_id"], 20)
