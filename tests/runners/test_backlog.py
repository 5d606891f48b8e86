"""A relay journal left on the host after the wrapper gave up waiting, sent home by the runner
(runners/tracking/backlog.py), against a real MLflow server that goes away and comes back."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from hmlkit.node import jobscript
from hmlkit.node.relay import Journal, Write
from tests.conftest import MlflowServer, free_port
from tests.runners.helpers import (
    assert_every_step_once,
    hml,
    logging_job,
    status,
    submit_json,
    wait_param,
    wait_status,
)
from tests.runners.test_local import local_profile

pytestmark = pytest.mark.server  # starts MLflow servers

TERMINAL = {"FINISHED", "FAILED", "KILLED"}


def _finalized(record_dir: Path) -> bool:
    return bool(json.loads((record_dir / "record.json").read_text())["finalized"])


def _gated_run(tmp_path: Path, server: MlflowServer, steps: int) -> tuple[str, Path]:
    """A run whose job logs its param, then waits for ``go`` in the workdir; (run id, record dir)."""
    profile = local_profile(tmp_path / "hybridml.yaml", server.url)
    job = logging_job(
        tmp_path / "w",
        steps=steps,
        pause=0.02,
        gate=True,
        envs={"TRACKING_RELAY_DRAIN_S": 1, "TRACKING_SYSTEM_METRICS_S": 0},
    )
    summary, _ = submit_json(str(job), "--detach", env={"HML_CONFIG": str(profile)})
    run_id = summary["run_id"]
    wait_param(server, run_id, "steps")
    return run_id, Path(status(run_id)["log"]).parent


def test_a_journal_the_wrapper_left_is_sent_home_by_the_runner(tmp_path):
    """The server is down when the job ends and the wrapper gives up after 1 s: the run ends saying
    where its records wait, stays unfinalized, and once the server is back the runner's next
    contact lands every step exactly once and removes the journal."""
    server = MlflowServer(tmp_path / "srv", free_port()).start()
    try:
        run_id, record_dir = _gated_run(tmp_path, server, steps=40)
        server.stop()
        (tmp_path / "w" / "go").touch()
        final = wait_status(run_id, TERMINAL, timeout=90)
        assert final["status"] == "FINISHED", hml("logs", run_id).stdout
        log = hml("logs", run_id).stdout
        assert "gave up syncing" in log, log
        waiting = re.search(r"\[hml\] (\d+) records wait in \S+" + jobscript.RELAY_JOURNAL, log)
        assert waiting and int(waiting[1]) >= 41, log  # 40 steps and the tag, at least
        journal = record_dir / "attempt-0" / jobscript.RELAY_JOURNAL
        assert journal.is_dir()
        time.sleep(2)
        assert not _finalized(record_dir), "the run was finalized ahead of its records"
        server.start()
        deadline = time.monotonic() + 120
        while not _finalized(record_dir):
            assert time.monotonic() < deadline, (record_dir / "supervisor.log").read_text()
            status(run_id)
            time.sleep(0.5)
        assert_every_step_once(server, run_id, 40)
        assert not journal.exists()
    finally:
        server.stop()


def test_hml_gc_sends_a_finalized_runs_leftover_journal(tmp_path):
    """A run finalized before its journal went home (a runner from before this change): ``hml gc``
    replays it with the relay's exactly-once replay, says so, and removes it; ``hml status``
    then finds nothing more to send."""
    server = MlflowServer(tmp_path / "srv", free_port()).start()
    try:
        run_id, record_dir = _gated_run(tmp_path, server, steps=3)
        (tmp_path / "w" / "go").touch()
        wait_status(run_id, TERMINAL, timeout=90)
        deadline = time.monotonic() + 60
        while not _finalized(record_dir):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        # what a relay journals when the server is away: three more steps, the last one in doubt
        # (sent, applied, never acknowledged), so replay must not log it twice
        root = record_dir / "attempt-0" / jobscript.RELAY_JOURNAL
        journal = Journal(root)
        for step in (3, 4, 5):
            body = {"run_id": run_id, "key": "loss", "value": 0.1, "timestamp": 1000 + step, "step": step}
            write = Write("POST", "/api/2.0/mlflow/runs/log-metric", {"Content-Type": "application/json"})
            write.body, write.doubt = json.dumps(body).encode(), step == 5
            journal.append(write)
        journal.close()
        server.client().log_metric(run_id, "loss", 0.1, timestamp=1005, step=5)
        out = hml("gc", env={"HML_CONFIG": str(tmp_path / "hybridml.yaml")})
        assert out.returncode == 0, out.stderr
        assert f"{run_id}: sent 3 leftover records to the tracking server" in out.stdout, out.stdout
        assert not root.exists()
        history = server.client().get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(6)), "a step is missing or twice"
        again = hml("status", run_id)
        assert again.returncode == 0 and "leftover" not in again.stderr, again.stderr
    finally:
        server.stop()
