"""Behaviour every target must show, written once; each backend is a one-line subclass.

A subclass provides the ``target`` fixture: (profile path, target name) for a profile whose
``tracking_uri`` is the session's real MLflow server.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.runners.helpers import (
    HML,
    hml,
    process_report,
    processes_matching,
    run_report,
    status,
    submit_json,
    wait_finalized,
    wait_status,
    write_job,
)

PY = sys.executable


class BackendContract:
    @pytest.fixture
    def target(self) -> tuple[Path, str]:
        raise NotImplementedError

    def submit(self, target: tuple[Path, str], job: Path, *extra: str):
        profile, name = target
        return submit_json(str(job), "--target", name, *extra, env={"HML_CONFIG": str(profile)})

    def test_success_records_params_tags_metrics_and_output(self, target, tmp_path, mlflow_server):
        code = "import mlflow; mlflow.log_metric('answer', 42); print('hello from the job')"
        job = write_job(tmp_path / "w", run=f'{PY} -c "{code}"', params={"lr": 0.5, "tag": "x"})
        summary, out = self.submit(target, job)
        assert out.returncode == 0, out.stderr
        assert summary["status"] == "FINISHED"
        assert summary["target"] == target[1]
        assert summary["tracking_uri"] == mlflow_server.url
        run = wait_finalized(mlflow_server.client(), summary["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.metrics["answer"] == 42
        assert run.data.params["lr"] == "0.5" and run.data.params["tag"] == "x"
        tags = run.data.tags
        assert tags["hml.target"] == target[1] and tags["hml.job"] == "job"
        assert tags["hml.exit_code"] == "0" and tags["hml.user"]
        assert run.data.metrics["hml.duration_s"] > 0
        client = mlflow_server.client()
        names = {a.path for a in client.list_artifacts(run.info.run_id, "hml")}
        assert names == {"hml/job.yaml", "hml/output.log"}
        log = Path(client.download_artifacts(run.info.run_id, "hml/output.log", str(tmp_path)))
        assert "hello from the job" in log.read_text()

    def test_failing_job_exits_1_and_keeps_its_output(self, target, tmp_path, mlflow_server):
        job = write_job(tmp_path / "w", run="echo about to fail; exit 3")
        summary, out = self.submit(target, job)
        assert out.returncode == 1
        assert summary["status"] == "FAILED" and summary["exit_code"] == 3
        run = wait_finalized(mlflow_server.client(), summary["run_id"])
        assert run.info.status == "FAILED"
        assert run.data.tags["hml.exit_code"] == "3"
        log = hml("logs", summary["run_id"], env={"HML_CONFIG": str(target[0])})
        assert "about to fail" in log.stdout

    @pytest.fixture
    def target_logs(self) -> Callable[[], str]:
        """The tails of the target's own logs (a scheduler's daemons), for a failure's message."""
        return lambda: ""

    def test_cancel_kills_every_process(self, target, tmp_path, mlflow_server, hml_home, target_logs):
        nonce = str(uuid.uuid4().int)[:9]
        sleeper = f"sleep 987.{nonce}"
        job = write_job(tmp_path / "w", run=f"{sleeper} & {sleeper}; echo never")
        summary, out = self.submit(target, job, "--detach")
        assert out.returncode == 0, out.stderr
        run_id = summary["run_id"]
        times = [("submitted", time.monotonic())]

        def why() -> str:  # a failure here has been rare and load-bound: say everything
            start = times[0][1]
            steps = ", ".join(f"{name} at {at - start:.1f} s" for name, at in times)
            return "\n".join(
                [steps, process_report(sleeper, f"{run_id}/"), run_report(hml_home, run_id), target_logs()]
            )

        wait_status(run_id, {"RUNNING"})
        times.append(("RUNNING", time.monotonic()))
        # RUNNING can come before the job's processes exist (Slurm's allocation precedes srun's
        # step, a host's wrapper runs setup first): wait for both, then cancel
        deadline = time.monotonic() + 30
        while len(processes_matching(sleeper)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        times.append(("sleepers checked", time.monotonic()))
        assert len(processes_matching(sleeper)) == 2, f"the job never started\n{why()}"
        cancelled = hml("cancel", run_id, "--output", "json")
        times.append(("cancel returned", time.monotonic()))
        assert cancelled.returncode == 0, f"{cancelled.stderr}\n{why()}"
        assert status(run_id)["status"] == "KILLED", why()
        run = wait_finalized(mlflow_server.client(), run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags["hml.reason"] == "cancelled by user"
        times.append(("finalized", time.monotonic()))
        deadline = time.monotonic() + 10
        while processes_matching(sleeper) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not processes_matching(sleeper), f"a process of the job is left\n{why()}"
        assert not processes_matching(f"{run_id}/"), f"the job's wrapper is left\n{why()}"

    def test_max_runtime_stops_the_job_as_failed(self, target, tmp_path, mlflow_server):
        job = write_job(tmp_path / "w", run="sleep 120", max_runtime=2)
        started = time.monotonic()
        summary, out = self.submit(target, job)
        assert out.returncode == 1
        assert time.monotonic() - started < 60
        assert summary["status"] == "FAILED"
        assert "max_runtime" in summary["reason"]
        run = wait_finalized(mlflow_server.client(), summary["run_id"])
        assert run.info.status == "FAILED" and "max_runtime" in run.data.tags["hml.reason"]

    def test_status_from_a_new_process_after_the_cli_was_killed(self, target, tmp_path, mlflow_server):
        import os
        import signal
        import subprocess

        from tests.runners.helpers import HML

        job = write_job(tmp_path / "w", run="echo started; sleep 4; echo done")
        proc = subprocess.Popen(
            [HML, "submit", str(job), "--target", target[1]],
            env={**os.environ, "HML_CONFIG": str(target[0])},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 120  # a cloud target boots its instance first
        while "started" not in proc.stdout.readline() and time.monotonic() < deadline:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        run_id = hml("list", "--output", "json")
        import json

        runs = json.loads(run_id.stdout)
        assert len(runs) == 1 and runs[0]["status"] == "RUNNING", runs
        followed = hml("logs", runs[0]["run_id"], "--follow", timeout=120)  # re-attach until the end
        assert "started" in followed.stdout and "done" in followed.stdout
        assert status(runs[0]["run_id"])["status"] == "FINISHED"
        assert wait_finalized(mlflow_server.client(), runs[0]["run_id"]).info.status == "FINISHED"

    @pytest.fixture
    def host_dirs(self) -> list[Path]:
        """Where the target keeps files on its hosts (searched for leaked secrets)."""
        return []

    def test_a_secret_never_reaches_a_file_mlflow_or_the_terminal(
        self, target, host_dirs, tmp_path, mlflow_server, hml_home
    ):
        secret = f"s3cr3t-{uuid.uuid4().hex}"
        undeclared = f"undeclared-{uuid.uuid4().hex}"
        run = "\n".join(
            [
                'echo "token is $API_TOKEN, whole"',
                'printf "split %s" "${API_TOKEN:0:9}"; sleep 0.6; '
                'printf "%s across chunks\\n" "${API_TOKEN:9}"',
                'echo "to stderr: [$API_TOKEN]" >&2',
                "printf 'no newline at the end %s' \"$API_TOKEN\"; sleep 0.6; echo",
                "env",  # everything the job was given: no undeclared variable may be among it
                "echo checkpoint-reached; sleep 3",
                'echo "after restart: $API_TOKEN"',
            ]
        )
        job = write_job(tmp_path / "w", run=run, secrets=["API_TOKEN"])
        submitter = {
            "HML_CONFIG": str(target[0]),
            "HML_SECRET_API_TOKEN": secret,
            "HML_SECRET_OTHER": undeclared,
            "CLOUD_API_TOKEN": undeclared,
        }
        printed = []
        summary, out = submit_json(
            str(job), "--target", target[1], "--detach", "--set", f"note={secret}", env=submitter
        )
        printed += [out.stdout, out.stderr]
        assert out.returncode == 0, out.stderr
        run_id = summary["run_id"]
        deadline = time.monotonic() + 120
        while "checkpoint-reached" not in hml("logs", run_id).stdout:
            assert time.monotonic() < deadline, "the job never reached its checkpoint"
            time.sleep(0.2)
        import json
        import os
        import signal

        record = json.loads((Path(summary["log"]).parent / "record.json").read_text())
        os.kill(record["supervisor_pid"], signal.SIGKILL)  # the restart comes from a clean shell
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("HML_SECRET_", "CLOUD_API_"))}
        follow = subprocess.run(
            [HML, "logs", run_id, "--follow"], env=clean, capture_output=True, text=True, timeout=120
        )
        printed += [follow.stdout, follow.stderr]
        assert "after restart: ***" in follow.stdout
        # the restarted supervisor resumes each stream where the killed one stopped: every line once
        assert [follow.stdout.count(line) for line in ("token is ***, whole", "checkpoint-reached")] == [1, 1]
        assert "token is ***, whole" in follow.stdout and "split *** across chunks" in follow.stdout
        assert "to stderr: [***]" in follow.stdout and "no newline at the end ***" in follow.stdout
        assert "HML_SECRET_OTHER" not in follow.stdout and "CLOUD_API_TOKEN" not in follow.stdout
        final = subprocess.run(
            [HML, "status", run_id, "-o", "json"], env=clean, capture_output=True, text=True
        )
        printed += [final.stdout, final.stderr]
        assert json.loads(final.stdout)["status"] == "FINISHED"
        client = mlflow_server.client()
        mlrun = wait_finalized(client, run_id)
        assert mlrun.data.params["note"] == "***"
        tracked = [str(mlrun.data.params), str(mlrun.data.tags), str(list(mlrun.data.metrics))]
        art = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts")))
        assert "after restart: ***" in (art / "hml" / "output.log").read_text()
        roots = [hml_home, art, mlflow_server.root, *host_dirs]
        for value in (secret, undeclared):
            assert not [t for t in printed + tracked if value in t], "printed or tracked"
            leaked = [
                p
                for root in roots
                for p in root.rglob("*")
                if p.is_file() and value.encode() in p.read_bytes()
            ]
            assert not leaked, f"found in {leaked}"
        # the job's venv links the host's interpreter (public, not the run's): links are not files of it
        run_files = [p for p in (hml_home / "runs" / run_id).rglob("*") if not p.is_symlink()]
        assert run_files and all(p.stat().st_mode & 0o077 == 0 for p in run_files), "not private"

    def test_missing_secret_is_a_usage_error(self, target, tmp_path):
        job = write_job(tmp_path / "w", run="true", secrets=["NOT_SET_ANYWHERE"])
        out = hml("submit", str(job), "--target", target[1], env={"HML_CONFIG": str(target[0])})
        assert out.returncode == 2
        assert "NOT_SET_ANYWHERE" in out.stderr and "Traceback" not in out.stderr
