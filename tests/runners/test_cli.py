"""The CLI a person expects: version, completion, Ctrl-C that detaches, short ids, list filters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.runners.helpers import HML, hml, status, submit_json, wait_status, write_job


def test_version_and_completion_are_offered():
    out = hml("--version")
    assert out.returncode == 0 and out.stdout.startswith("hml (hybridml) ")
    helptext = hml("--help").stdout
    assert "--install-completion" in helptext and "--version" in helptext


def test_help_shows_placeholders_not_python_types():
    text = hml("submit", "--help").stdout
    for placeholder in ("JOB", "TARGET", "KEY=VALUE"):
        assert placeholder in text
    assert "TEXT" not in text and "INTEGER" not in text
    assert "AGE|DATE" in hml("list", "--help").stdout and "RUN" in hml("status", "--help").stdout


def test_ctrl_c_on_an_attached_submit_detaches_with_exit_130(tmp_path):
    job = write_job(tmp_path / "w", run="echo first-line; sleep 4; echo last-line")
    proc = subprocess.Popen(
        [HML, "submit", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while "first-line" not in proc.stdout.readline():
        assert time.monotonic() < deadline, "the job never printed"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to its foreground group
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    run_id = json.loads(hml("list", "-o", "json").stdout)[0]["run_id"]
    assert f"hml logs {run_id[:8]} --follow" in err and f"hml cancel {run_id[:8]}" in err
    final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=60)
    assert final["status"] == "FINISHED", "the job did not go on after the CLI detached"
    assert "last-line" in hml("logs", run_id[:8]).stdout


def test_list_short_ids_filters_and_80_columns(tmp_path, hml_home):
    ok = write_job(tmp_path / "a", name="short-job", run="echo ok")
    bad = write_job(tmp_path / "b", name="failing-job", run="exit 4")
    done, _ = submit_json(str(ok))
    failed, out = submit_json(str(bad))
    assert out.returncode == 1
    detached, out = submit_json(str(ok), "--detach")
    assert f"hml cancel {detached['run_id'][:8]}" in out.stderr  # next steps, as after Ctrl-C
    wait_status(detached["run_id"], {"FINISHED"})

    table = hml("list", env={"COLUMNS": "80"}).stdout
    lines = table.rstrip("\n").splitlines()
    assert len(lines) == 4 and all(len(line) <= 80 for line in lines), table
    for run in (done, failed, detached):
        row = next(line for line in lines if line.startswith(run["run_id"][:8]))
        assert run["job"] in row and "local" in row and "$0.00" in row
    assert "FAILED" in next(line for line in lines if line.startswith(failed["run_id"][:8]))

    def ids(*args: str) -> set[str]:
        out = hml("list", "-o", "json", *args)
        assert out.returncode == 0, out.stderr
        return {r["run_id"] for r in json.loads(out.stdout)}

    assert ids("--state", "FAILED") == {failed["run_id"]}
    assert ids("--state", "FINISHED") == {done["run_id"], detached["run_id"]}
    assert ids("--target", "local", "--since", "1h") == {done["run_id"], failed["run_id"], detached["run_id"]}
    assert hml("list", "--target", "elsewhere").returncode == 2  # a typo, not an empty table
    assert ids("--since", "2999-01-01") == set()
    assert ids("--limit", "1") == {detached["run_id"]}
    assert status(failed["run_id"][:8])["status"] == "FAILED"  # a short id works everywhere
    logs = hml("logs", failed["run_id"][:8])
    assert logs.returncode == 0 and "exit code 4" in logs.stdout, logs.stderr
    assert (hml_home / "runs").stat().st_mode & 0o077 == 0
    # hml's own files owner-only; a job's venv (made with the usual modes) sits inside them
    runs = [p for p in Path(hml_home, "runs").rglob("*") if "venv" not in p.parts]
    assert [p for p in runs if p.lstat().st_mode & 0o077] == []
    assert all(p.stat().st_mode & 0o077 == 0 for p in Path(hml_home, "runs").glob("*/*") if p.is_dir())
