"""The slurm target against a real Slurm cluster (tests/slurmbed.py) whose login node is an sshd
host of the SSH bed, and a real MLflow server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from hmlkit.profile import target_problems
from runners.spec import memory_mib
from tests.runners.contract import BackendContract
from tests.runners.helpers import (
    hml,
    process_report,
    processes_matching,
    status,
    submit_json,
    two_node_digits,
    wait_finalized,
    wait_status,
    write_job,
)
from tests.slurmbed import PARTITION, SHORT_PARTITION, URGENT_PARTITION

ENDED = {"FINISHED", "FAILED", "KILLED"}


def slurm_profile(tmp_path: Path, ssh_bed, slurm_bed, tracking_uri: str, **extra) -> Path:
    known = tmp_path / "known_hosts"
    known.write_text(ssh_bed.known_hosts_text())
    target = slurm_bed.target(ssh_bed.hosts[0], known, **extra)
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(yaml.safe_dump({"tracking_uri": tracking_uri, "targets": {"cluster": target}}))
    return profile


def job_id(run_id: str, **kw) -> str:
    record = json.loads((Path(status(run_id, **kw)["log"]).parent / "record.json").read_text())
    return record["handle"]["job_id"]


def wait_log(run_id: str, text: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while text not in (logs := hml("logs", run_id).stdout):
        assert time.monotonic() < deadline, f"{text!r} never showed in the log:\n{logs}"
        time.sleep(0.5)
    return logs


@pytest.fixture
def profile(tmp_path, ssh_bed, slurm_bed, mlflow_server) -> Path:
    slurm_bed.slurm("scancel", f"--partition={PARTITION}")  # whatever a failed test left running
    slurm_bed.wait_idle()  # a test starts on an empty default partition
    return slurm_profile(tmp_path, ssh_bed, slurm_bed, mlflow_server.url)


@pytest.fixture(scope="module", autouse=True)
def timed_out(request, tmp_path_factory):
    """A run that Slurm's time limit ends, started as the module starts when its test is selected:
    a limit is whole minutes, checked every 30 s, so it runs beside the other scenarios on the
    short partition's own node. No max_runtime: the partition's one-minute default ends it."""
    if not any(
        item.name == "test_slurms_time_limit_ends_the_run_as_timeout" for item in request.session.items
    ):
        yield None
        return
    names = ("ssh_bed", "slurm_bed", "mlflow_server")
    ssh_bed, slurm_bed, mlflow_server = map(request.getfixturevalue, names)
    tmp = tmp_path_factory.mktemp("timeout")
    profile = slurm_profile(tmp, ssh_bed, slurm_bed, mlflow_server.url, partition=SHORT_PARTITION)
    env = {"HML_CONFIG": str(profile), "HML_HOME": str(tmp / "hml-home")}
    job = write_job(tmp / "w", run="echo started; sleep 600")
    summary, out = submit_json(str(job), "--target", "cluster", "--detach", env=env)
    assert out.returncode == 0, out.stderr
    yield summary["run_id"], env
    if status(summary["run_id"], env=env)["status"] not in ENDED:
        hml("cancel", summary["run_id"], env=env)


class TestSlurm(BackendContract):
    @pytest.fixture
    def target(self, profile):
        return profile, "cluster"

    @pytest.fixture
    def target_logs(self, slurm_bed):
        return slurm_bed.log_tails

    @pytest.fixture
    def host_dirs(self, slurm_bed):
        """The shared directory, and Slurm's own state and spool: no secret reaches Slurm."""
        return [slurm_bed.root]


def test_two_nodes_get_the_rendezvous_and_keep_each_nodes_output(profile, tmp_path, slurm_bed):
    run = 'echo "rank=$NODE_RANK of $NNODES master=$MASTER_ADDR:$MASTER_PORT on $SLURMD_NODENAME"'
    job = write_job(
        tmp_path / "w", run=run, num_nodes=2, resources={"cpus": 2, "memory": "1GB"}, max_runtime="10m"
    )
    summary, out = submit_json(str(job), "--target", "cluster", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    logs = hml("logs", summary["run_id"]).stdout
    assert "[node 0] rank=0 of 2 master=127.0.0.1:" in logs and "on node1" in logs
    assert "[node 1] rank=1 of 2 master=127.0.0.1:" in logs and "on node2" in logs
    shown = slurm_bed.slurm("scontrol", "show", "job", "-o", job_id(summary["run_id"]))
    for field in (f"Comment=hml-run:{summary['run_id']}", "NumNodes=2", "TimeLimit=00:10:00", "JobName=job"):
        assert field in shown
    assert "MinCPUsNode=2" in shown and "MinMemoryNode=954M" in shown  # 1 GB is 954 MiB


def test_a_job_queued_behind_a_full_cluster_starts_when_room_frees(
    profile, tmp_path, slurm_bed, mlflow_server
):
    env = {"HML_CONFIG": str(profile)}
    full = write_job(tmp_path / "a", run="echo filling; sleep 300", num_nodes=2, resources={"cpus": 2})
    first, out = submit_json(str(full), "--target", "cluster", "--detach", env=env)
    assert out.returncode == 0, out.stderr
    try:
        wait_log(first["run_id"], "filling")
        small = write_job(tmp_path / "b", run="echo my turn")
        second, out = submit_json(str(small), "--target", "cluster", "--detach", env=env)
        deadline = time.monotonic() + 60
        while "queued in Slurm: Resources" not in (state := status(second["run_id"]))["reason"]:
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        assert state["status"] == "RUNNING"
        burst = yaml.safe_load(profile.read_text())
        burst["targets"]["local"] = {"kind": "local"}
        burst["placement"] = ["cluster", "local"]
        profile.write_text(yaml.safe_dump(burst))
        dry = hml("submit", str(small), "--target", "auto", "--dry-run", "-o", "json", env=env)
        assert dry.returncode == 0, dry.stderr
        placed = json.loads(dry.stdout)
        assert placed["target"] == "local" and placed["placement"]["cluster"].startswith("no room now: Slurm")
        shared = slurm_bed.root / "shared" / "squeue"  # one squeue --me serves both runs' polls
        wanted = [f"{job_id(r['run_id'])}|" for r in (first, second)]
        while not all(w in shared.read_text() for w in wanted):
            assert time.monotonic() < deadline, shared.read_text()
            time.sleep(0.5)
        queued_since = time.monotonic()
        time.sleep(8)
    finally:
        assert hml("cancel", first["run_id"]).returncode == 0
    queued_for = time.monotonic() - queued_since
    final = wait_status(second["run_id"], ENDED, timeout=120)
    assert final["status"] == "FINISHED", hml("logs", second["run_id"]).stdout
    logs = hml("logs", second["run_id"]).stdout
    assert "queued in Slurm: Resources" in logs and "my turn" in logs
    run = wait_finalized(mlflow_server.client(), second["run_id"])
    assert run.data.metrics["hml.duration_s"] < queued_for  # the wait in the queue does not count


def test_cancel_of_a_two_node_job_leaves_nothing_on_any_node(profile, tmp_path, slurm_bed):
    env = {"HML_CONFIG": str(profile)}
    daemon = "(setsid sleep 602 </dev/null >/dev/null 2>&1 &)"  # out of the job's process tree
    job = write_job(tmp_path / "w", run=f"{daemon}; echo up; sleep 600 & sleep 601", num_nodes=2)
    summary, _ = submit_json(str(job), "--target", "cluster", "--detach", env=env)
    run_id = summary["run_id"]
    wait_log(run_id, "[node 1] up")
    slurm_job = job_id(run_id)
    assert len(slurm_bed.job_processes(slurm_job)) >= 6, "the job does not run on both nodes"
    assert hml("cancel", run_id).returncode == 0
    assert status(run_id)["status"] == "KILLED"
    assert not slurm_bed.job_processes(slurm_job), "a process of the job is left on a node"  # the epilog
    # nor on the login node: the nodes' output followers ended before the run turned KILLED
    assert not processes_matching(f"{run_id}/"), process_report(f"{run_id}/")
    assert "CANCELLED" in slurm_bed.slurm("squeue", "-h", "--states=all", "-j", slurm_job, "-o", "%T")


def test_gc_cancels_only_this_runners_jobs_whose_run_is_gone(profile, tmp_path, slurm_bed, hml_home):
    job = write_job(tmp_path / "w", run="echo up; sleep 300")
    other_runner = {"HML_CONFIG": str(profile), "HML_HOME": str(tmp_path / "elsewhere")}
    theirs, _ = submit_json(str(job), "--target", "cluster", "--detach", env=other_runner)
    ours, _ = submit_json(str(job), "--target", "cluster", "--detach", env={"HML_CONFIG": str(profile)})
    wait_log(ours["run_id"], "up")
    ours_job, theirs_job = job_id(ours["run_id"]), job_id(theirs["run_id"], env=other_runner)
    record = json.loads((hml_home / "runs" / ours["run_id"] / "record.json").read_text())
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    shutil.rmtree(hml_home / "runs" / ours["run_id"])  # its supervisor is gone, the run unknown here
    out = hml("gc", env={"HML_CONFIG": str(profile)})
    assert (
        out.stdout.strip()
        == f"cluster: cancelled Slurm job {ours_job} of run {ours['run_id']} (run over or unknown)"
    )
    deadline = time.monotonic() + 15
    while slurm_bed.job_processes(ours_job) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not slurm_bed.job_processes(ours_job)
    assert slurm_bed.slurm("squeue", "-h", "-j", theirs_job, "-o", "%T").strip() == "RUNNING"
    assert hml("cancel", theirs["run_id"], env=other_runner).returncode == 0


def test_a_job_slurm_can_never_run_is_refused_before_a_run_exists(profile, tmp_path, hml_home):
    job = write_job(tmp_path / "w", run="true", num_nodes=3)
    out = hml("submit", str(job), "--target", "cluster", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 2 and "can never run this job" in out.stderr
    assert "node configuration is not available" in out.stderr and "Traceback" not in out.stderr
    assert not (hml_home / "runs").exists() or not list((hml_home / "runs").iterdir())


def test_a_node_dies_mid_job_node_fail_then_the_retry_runs(profile, tmp_path, slurm_bed):
    env = {"HML_CONFIG": str(profile)}
    run = 'echo "attempt $HML_ATTEMPT on $SLURMD_NODENAME"; [ "$HML_ATTEMPT" -gt 0 ] || sleep 300'
    job = write_job(tmp_path / "w", run=run, retries=1)
    summary, _ = submit_json(str(job), "--target", "cluster", "--detach", env=env)
    run_id = summary["run_id"]
    logs = wait_log(run_id, "attempt 0 on node")
    victim = logs.split("attempt 0 on ")[1].split()[0]
    slurm_bed.kill_node(victim)
    try:
        final = wait_status(run_id, ENDED, timeout=120)
        logs = hml("logs", run_id).stdout
        assert final["status"] == "FINISHED", logs
        assert "attempt 1 failed (Slurm NODE_FAIL" in logs and "attempt 1 on node" in logs
        assert f"attempt 1 on {victim}" not in logs
    finally:
        slurm_bed.start_node(victim)


def test_a_job_past_its_memory_is_out_of_memory(profile, tmp_path, mlflow_server):
    """The bed enforces ``--mem`` as clusters without cgroups do (OverMemoryKill)."""
    run = "echo allocating; python3 -c 'import time; b = bytearray(400 * 2**20); time.sleep(60)'"
    job = write_job(tmp_path / "w", run=run, resources={"memory": "100MB"})
    summary, out = submit_json(str(job), "--target", "cluster", env={"HML_CONFIG": str(profile)})
    assert out.returncode != 0 and summary["status"] == "FAILED", out.stderr
    shown = status(summary["run_id"])
    assert shown["reason"].startswith("Slurm OUT_OF_MEMORY") and "raise resources.memory" in shown["reason"]
    assert "Exceeded job memory limit" in hml("logs", summary["run_id"]).stdout  # Slurm's own words
    run = wait_finalized(mlflow_server.client(), summary["run_id"])
    assert run.data.tags["hml.reason"].startswith("Slurm OUT_OF_MEMORY")


CHECKPOINTED = """done=$(cat .checkpoints/step 2>/dev/null || echo 0); mkdir -p .checkpoints
echo "attempt $HML_ATTEMPT on $SLURMD_NODENAME after step $done"
for s in 1 2 3; do
  [ "$s" -le "$done" ] && continue
  echo "$s" > .checkpoints/step.tmp && mv .checkpoints/step.tmp .checkpoints/step  # whole or not at all
  echo "step $s"
  if [ "$s" = 2 ] && [ "$HML_ATTEMPT" = 0 ]; then sleep 300; exit 1; fi
done
"""
"""Three steps, a checkpoint after each in the workdir (before the step is reported done); the
first attempt stalls after step 2 and never reaches step 3: under load, Slurm's SIGTERM at the
preemption once ended the ``sleep`` while its shell went on to step 3 before the SIGKILL
(KillWait) came, and the retry then rightly resumed after step 3."""


def test_preempted_then_the_retry_resumes_from_its_checkpoint(profile, tmp_path, slurm_bed, mlflow_server):
    env = {"HML_CONFIG": str(profile)}
    job = write_job(tmp_path / "w", run=CHECKPOINTED, retries=1)
    summary, _ = submit_json(str(job), "--target", "cluster", "--detach", env=env)
    run_id = summary["run_id"]
    logs = wait_log(run_id, "step 2")
    victim = logs.split("attempt 0 on ")[1].split()[0]
    slurm_bed.slurm(  # a job of the higher tier needs the victim's node whole: Slurm cancels ours
        "sbatch",
        f"--partition={URGENT_PARTITION}",
        f"--nodelist={victim}",
        "--exclusive",
        f"--output={slurm_bed.root}/urgent-%j.out",
        "--wrap=sleep 3",
    )
    final = wait_status(run_id, ENDED, timeout=120)
    logs = hml("logs", run_id).stdout
    assert final["status"] == "FINISHED", logs
    assert "attempt 1 failed (Slurm PREEMPTED: the scheduler took the nodes" in logs
    assert "DUE TO PREEMPTION" in logs  # slurmstepd's own words
    assert "attempt 1 on node" in logs and "after step 2" in logs  # the retry read the checkpoint
    steps = [line[5:] for line in logs.splitlines() if re.fullmatch(r"step \d", line)]
    assert steps == ["1", "2", "3"], logs  # done steps are not run again
    assert wait_finalized(mlflow_server.client(), run_id).info.status == "FINISHED"  # one run, both attempts


def test_two_node_ddp_training_with_torchrun(profile, mlflow_server):
    """The digits example, unmodified, as 2 ranks under srun + torchrun; rank 0 logs to MLflow."""
    two_node_digits(profile, "cluster", 3, mlflow_server, accuracy=0.8)


def test_slurms_time_limit_ends_the_run_as_timeout(timed_out, mlflow_server):
    run_id, env = timed_out
    final = wait_status(run_id, ENDED, timeout=240, env=env)
    assert final["status"] == "FAILED" and final["reason"].startswith("Slurm TIMEOUT"), final
    assert "DUE TO TIME LIMIT" in hml("logs", run_id, env=env).stdout  # slurmstepd's own words
    run = wait_finalized(mlflow_server.client(), run_id)
    assert run.data.tags["hml.reason"].startswith("Slurm TIMEOUT")


def test_profile_words_that_would_break_an_sbatch_line_are_refused():
    login = {"address": "login.example.com", "user": "hml"}
    good = {"kind": "slurm", "login": login, "partition": "gpu,gpu-long", "constraints": "a100&ib"}
    assert target_problems(good) == []
    problems = target_problems({**good, "account": "ml team", "qos": "x'y"})
    assert [p.split(":")[0] for p in problems] == ["account", "qos"]
    assert target_problems({"kind": "slurm"}) == ["login: required field is missing"]


def test_memory_sizes_become_slurm_mebibytes():
    assert memory_mib("16GiB") == 16 * 1024
    assert memory_mib("1GB") == 954 and memory_mib("1") == 954
    assert memory_mib("512M") == 489 and memory_mib("2 TiB") == 2 * 1024 * 1024
