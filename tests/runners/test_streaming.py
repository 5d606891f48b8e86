"""Output arrives exactly once: a fast writer loses no line and repeats none, even when the
supervisor is killed mid-stream and a new one takes over (local and ssh, one node and two)."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.runners.helpers import hml, submit_json, wait_status, write_job
from tests.runners.test_local import local_profile
from tests.runners.test_ssh import ssh_profile

pytestmark = pytest.mark.server  # its targets' servers and beds come through getfixturevalue

LINES = 10_000
FAST = f"seq 0 {LINES - 1} | sed 's/^/line-/'"
# 20 bursts of 500 lines, 0.2 s apart: long enough to kill the supervisor in the middle
BURSTS = "for b in $(seq 0 19); do seq $((b*500)) $((b*500+499)) | sed 's/^/line-/'; sleep 0.2; done"


@pytest.fixture(params=["local", "ssh", "ssh-stock"])
def target(request, tmp_path) -> tuple[Path, str]:
    """``ssh-stock``: a host as users' hosts are (stock sshd, PAM, a slow ``~/.bashrc`` that prints);
    its login is another OS user, so the relay reaches the test's server through the runner."""
    server = request.getfixturevalue("mlflow_server")
    if request.param == "local":
        return local_profile(tmp_path / "hybridml.yaml", server.url), "local"
    if request.param == "ssh-stock":
        bed = request.getfixturevalue("ssh_slow_bed")
        return ssh_profile(tmp_path, bed, server.url, tracking_via="runner"), "onprem"
    return ssh_profile(tmp_path, request.getfixturevalue("ssh_bed"), server.url), "onprem"


def counts(log: str) -> dict[str, collections.Counter[int]]:
    """Per node prefix ('' on one node): how often each line-N appears in the run log."""
    found: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for match in re.finditer(r"^(\[node \d+\] )?line-(\d+)$", log, re.MULTILINE):
        found[match.group(1) or ""][int(match.group(2))] += 1
    return found


def assert_exactly_once(log: str, prefixes: list[str]) -> None:
    found = counts(log)
    assert sorted(found) == sorted(prefixes), f"lines from {sorted(found)}, want {prefixes}"
    for prefix in prefixes:
        missing = [n for n in range(LINES) if found[prefix][n] == 0]
        doubled = [n for n, c in found[prefix].items() if c > 1]
        assert not missing and not doubled, (
            f"{prefix!r}: {len(missing)} lost {missing[:5]}, doubled {doubled[:5]}"
        )


def test_ten_thousand_fast_lines_arrive_exactly_once(target, tmp_path):
    profile, name = target
    job = write_job(tmp_path / "w", run=FAST)
    summary, out = submit_json(str(job), "--target", name, env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    logs = hml("logs", summary["run_id"]).stdout
    assert_exactly_once(logs, [""])
    assert "Welcome" not in logs + out.stdout + out.stderr  # ssh-stock: its login's banner


def kill_supervisor_mid_stream(profile: Path, name: str, tmp_path: Path, nodes: int) -> None:
    env = {"HML_CONFIG": str(profile)}
    job = write_job(tmp_path / "w", run=BURSTS, num_nodes=nodes)
    summary, _ = submit_json(str(job), "--target", name, "--detach", env=env)
    run_id = summary["run_id"]
    log = Path(summary["log"])

    def lines() -> int:
        return sum(sum(c.values()) for c in counts(log.read_text() if log.exists() else "").values())

    deadline = time.monotonic() + 60
    while lines() < 1000 * nodes:
        assert time.monotonic() < deadline, "no output within 60 s"
        time.sleep(0.05)
    pid = json.loads((log.parent / "record.json").read_text())["supervisor_pid"]
    os.kill(pid, signal.SIGKILL)  # mid-stream: lines read but perhaps not yet accounted
    assert lines() < LINES * nodes, "the job ended before the supervisor was killed"
    final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=120, env=env)  # restarts it
    logs = hml("logs", run_id).stdout
    assert final["status"] == "FINISHED" and final["exit_code"] == 0, logs[-2000:]
    assert_exactly_once(logs, [""] if nodes == 1 else [f"[node {n}] " for n in range(nodes)])


def test_no_line_lost_or_doubled_across_a_supervisor_killed_mid_stream(target, tmp_path):
    kill_supervisor_mid_stream(*target, tmp_path, nodes=1)


def test_two_nodes_across_a_supervisor_killed_mid_stream(tmp_path, ssh_bed, mlflow_server):
    kill_supervisor_mid_stream(ssh_profile(tmp_path, ssh_bed, mlflow_server.url), "onprem", tmp_path, nodes=2)
