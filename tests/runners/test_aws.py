"""The aws target against a real moto server, with instances that boot real sshd hosts.

Every scenario ends by listing the instances hml tagged: none may still run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from runners.backends.aws import console_host_keys, fits, user_data, watchdog
from runners.spec import JobSpec
from tests.awsbed import AwsBed, cidr, wait_gone
from tests.runners.contract import BackendContract
from tests.runners.helpers import (
    hml,
    status,
    submit_json,
    two_node_digits,
    wait_finalized,
    wait_status,
    write_job,
)


def aws_profile(tmp_path: Path, bed: AwsBed, tracking_uri: str, **extra) -> Path:
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(
        yaml.safe_dump({"tracking_uri": tracking_uri, "targets": {"cloud": bed.target(**extra)}})
    )
    return profile


@pytest.fixture
def no_leak(aws_bed):
    yield
    assert wait_gone(aws_bed) == [], "an instance hml launched is still running"


@pytest.mark.usefixtures("no_leak")
class TestAws(BackendContract):
    @pytest.fixture
    def target(self, tmp_path, aws_bed, mlflow_server):
        return aws_profile(tmp_path, aws_bed, mlflow_server.url), "cloud"

    @pytest.fixture
    def host_dirs(self, aws_bed):
        return [aws_bed.remote_root]


def test_instance_choice_fits_resources_and_user_data_is_cloud_config():
    g4 = {"InstanceType": "g4dn.xlarge", "GpuInfo": {"Gpus": [{"Name": "T4", "Count": 1}]},
          "VCpuInfo": {"DefaultVCpus": 4}, "MemoryInfo": {"SizeInMiB": 16384}}  # fmt: skip
    spec = JobSpec(name="j", run="true", resources={"gpus": 1, "accelerator": "t4", "memory": "8GB"})
    assert fits(g4, spec)
    assert not fits(g4, JobSpec(name="j", run="true", resources={"gpus": 2}))
    assert not fits(g4, JobSpec(name="j", run="true", resources={"accelerator": "A100"}))
    assert not fits(g4, JobSpec(name="j", run="true", resources={"memory": "32GB"}))
    assert not fits(g4, JobSpec(name="j", run="true", resources={"cpus": 8}))
    text = user_data("ssh-ed25519 USER", JobSpec(name="j", run="x", max_runtime=60), ".hybridml")
    config = yaml.safe_load(text)
    assert text.startswith("#cloud-config\n")
    # no host key travels in user data: the instance makes its own and prints it to its console
    assert "ssh_keys" not in config and "PRIVATE KEY" not in text
    assert config["ssh_deletekeys"] and config["ssh"] == {"emit_keys_to_console": True}
    assert config["ssh_authorized_keys"] == ["ssh-ed25519 USER"]
    watchdog = config["write_files"][0]["content"]
    assert "poweroff" in watchdog and "deadline=$((start + 360))" in watchdog  # max_runtime + grace


def test_host_keys_come_from_the_first_complete_keys_block_of_the_console():
    ec2_console = (
        "[   10.1] cloud-init[900]: Cloud-init v. 24.1 running 'modules:final'\n"
        "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
        "ec2: 256 SHA256:abc root@ip-10-0-0-4 (ED25519)\n"
        "ec2: -----END SSH HOST KEY FINGERPRINTS-----\n"
        "-----BEGIN SSH HOST KEY KEYS-----\n"
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFirst root@ip-10-0-0-4\n"
        "-----END SSH HOST KEY KEYS-----\n"
    )
    assert console_host_keys(ec2_console) == [("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIFirst")]
    later = "-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3Later x\n-----END SSH HOST KEY KEYS-----\n"
    assert console_host_keys(ec2_console + later) == console_host_keys(ec2_console)
    assert console_host_keys(ec2_console.rsplit("-----END", 1)[0]) == []  # not printed whole yet


def test_the_watchdog_keeps_an_instance_whose_job_runs_under_a_non_default_remote_root(tmp_path):
    root = tmp_path / "scratch root"  # not the default .hybridml under a home; a space as well
    node = root / "runs" / "r1" / "attempt-0" / "node-0"
    node.mkdir(parents=True)
    powered_off = tmp_path / "powered-off"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "poweroff").write_text(f"#!/bin/sh\necho off >> {shlex.quote(str(powered_off))}\n")
    (bin_dir / "poweroff").chmod(0o755)
    script = tmp_path / "hml-watchdog"
    script.write_text(watchdog(str(root), 3600, grace_s=1, every_s=0.2))
    job = subprocess.Popen(["sleep", "60"])
    (node / "pid").write_text(str(job.pid))
    dog = subprocess.Popen(["sh", str(script)], env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    try:
        time.sleep(3)  # three times the grace: an instance without a live job would be off
        assert not powered_off.exists(), "powered off while the job ran"
        job.kill()
        job.wait()
        deadline = time.monotonic() + 10
        while not powered_off.exists():
            assert time.monotonic() < deadline, "not powered off once the job ended"
            time.sleep(0.1)
    finally:
        for proc in (job, dog):
            proc.kill()
            proc.wait()
    relative = watchdog("~/work/hml", 60)  # relative roots are under the login's home
    assert "/home/*/work/hml/runs/*/*/*/pid /root/work/hml/runs/*/*/*/pid" in relative


def test_dry_run_shows_type_market_nodes_and_price(tmp_path, aws_bed, mlflow_server):
    profile = aws_profile(tmp_path, aws_bed, mlflow_server.url, market="on-demand")
    job = write_job(tmp_path / "w", run="true", resources={"gpus": 1, "accelerator": "A10G"}, num_nodes=2)
    out = hml(
        "submit", str(job), "--target", "cloud", "--dry-run", "-o", "json", env={"HML_CONFIG": str(profile)}
    )
    assert out.returncode == 0, out.stderr
    launch = json.loads(out.stdout)["launch"]
    assert launch["instance_type"] == "g5.xlarge" and launch["nodes"] == 2 and launch["market"] == "on-demand"
    assert launch["hourly_usd"] == pytest.approx(2 * 1.006) and "list price" in launch["price_source"]
    assert aws_bed.tagged_running() == []  # a dry run launches nothing


def test_instances_are_tagged_with_shutdown_terminate_and_a_verified_host_key(
    tmp_path, aws_bed, mlflow_server, no_leak
):
    profile = aws_profile(tmp_path, aws_bed, mlflow_server.url)
    job = write_job(tmp_path / "w", run="echo on-the-instance; sleep 3")
    summary, out = submit_json(str(job), "--target", "cloud", "--detach", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    run_id = summary["run_id"]
    wait_status(run_id, {"RUNNING"}, timeout=90)
    (inst,) = aws_bed.instances(run_id)
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["team"] == "ml" and tags["cost-center"] == "cc-1" and tags["hml:user"]
    attr = aws_bed.ec2().describe_instance_attribute(
        InstanceId=inst["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
    )
    assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    # nothing secret in the user data; the key hml pinned is the one the instance made and printed
    data = aws_bed.user_data[inst["InstanceId"]]
    assert "PRIVATE KEY" not in data and "ssh_keys" not in data and "token" not in data.lower()
    pinned = (Path(summary["log"]).parent / "attempt-0-known_hosts").read_text()
    assert pinned == aws_bed.hosts[inst["InstanceId"]].host_key_line() + "\n"
    final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=90)
    assert final["status"] == "FINISHED" and "on-the-instance" in hml("logs", run_id).stdout


def test_two_instances_each_pinned_to_the_key_it_printed(tmp_path, aws_bed, mlflow_server, no_leak):
    profile = aws_profile(tmp_path, aws_bed, mlflow_server.url)
    job = write_job(tmp_path / "w", run='echo "rank-$NODE_RANK"', num_nodes=2)
    summary, out = submit_json(str(job), "--target", "cloud", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr
    logs = hml("logs", summary["run_id"]).stdout
    assert "rank-0" in logs and "rank-1" in logs
    instances = aws_bed.instances(summary["run_id"], states=("shutting-down", "terminated"))
    pinned = (Path(summary["log"]).parent / "attempt-0-known_hosts").read_text().splitlines()
    assert sorted(pinned) == sorted(aws_bed.hosts[i["InstanceId"]].host_key_line() for i in instances)
    tags = wait_finalized(mlflow_server.client(), summary["run_id"]).data.tags
    assert sorted(tags["hml.instance_ids"].split(",")) == sorted(i["InstanceId"] for i in instances)


def test_instance_terminated_mid_job_is_retried_and_resumes(tmp_path, aws_bed, mlflow_server, no_leak):
    profile = aws_profile(tmp_path, aws_bed, mlflow_server.url)
    # the checkpoint lives in the shared remote root here, as it would in the object store
    ckpt = aws_bed.remote_root / f"ckpt-{os.getpid()}-{time.time_ns()}"
    run = (
        f'if [ -f {ckpt} ]; then echo "resumed from $(cat {ckpt})"; exit 0; fi\n'
        f"echo step-1 > {ckpt}; sleep 60"
    )
    job = write_job(tmp_path / "w", run=run, retries=1)
    summary, _ = submit_json(str(job), "--target", "cloud", "--detach", env={"HML_CONFIG": str(profile)})
    run_id = summary["run_id"]
    wait_status(run_id, {"RUNNING"}, timeout=90)
    deadline = time.monotonic() + 60
    while not ckpt.exists():
        assert time.monotonic() < deadline, "the job never wrote its checkpoint"
        time.sleep(0.2)
    (inst,) = aws_bed.instances(run_id)
    aws_bed.ec2().terminate_instances(InstanceIds=[inst["InstanceId"]])  # a spot interruption
    final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=150)
    assert final["status"] == "FINISHED" and final["attempts"] == 2, final
    logs = hml("logs", run_id).stdout
    assert "instance terminated" in logs and "resumed from step-1" in logs


def test_max_cost_usd_stops_the_job_and_cost_is_price_times_hours(tmp_path, aws_bed, mlflow_server, no_leak):
    profile = aws_profile(
        tmp_path,
        aws_bed,
        mlflow_server.url,
        market="on-demand",
        prices={"g4dn.xlarge": 3600.0, "g5.xlarge": 7200.0},
    )
    job = write_job(tmp_path / "w", run="sleep 120", max_cost_usd=4)
    summary, out = submit_json(str(job), "--target", "cloud", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 1 and "max_cost_usd" in summary["reason"], summary
    assert 4 <= summary["cost_usd"] < 12  # 1 USD a second on the cheaper type
    run = wait_finalized(mlflow_server.client(), summary["run_id"])
    assert run.data.metrics["hml.cost_usd"] == pytest.approx(summary["cost_usd"])
    # the bill: the instance from launch to termination, boot and staging included
    assert summary["instance_cost_usd"] > summary["cost_usd"]
    assert run.data.metrics["hml.instance_cost_usd"] == pytest.approx(summary["instance_cost_usd"])
    (inst,) = aws_bed.instances(summary["run_id"], states=("shutting-down", "terminated"))
    assert run.data.tags["hml.instance_ids"] == inst["InstanceId"]
    assert run.data.tags["hml.instance_type"] == "g4dn.xlarge" and run.data.tags["hml.market"] == "on-demand"


def test_an_instance_answering_with_another_key_than_it_printed_is_refused_and_terminated(
    tmp_path, aws_bed, mlflow_server, no_leak
):
    profile = aws_profile(tmp_path, aws_bed, mlflow_server.url, market="on-demand")  # moto's spot is free
    name = f"impostor-{os.getpid()}-{time.time_ns()}"
    aws_bed.impostor_jobs.add(name)  # its sshd answers with a key other than the one printed
    job = write_job(tmp_path / "w", name=name, run="echo never-runs")
    summary, out = submit_json(str(job), "--target", "cloud", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 1 and summary["status"] == "FAILED", (summary, out.stderr)
    (inst,) = aws_bed.instances(summary["run_id"], states=("shutting-down", "terminated"))
    answered = aws_bed.hosts[inst["InstanceId"]].fingerprint()
    reason = summary["reason"]
    assert reason.startswith("launch failed: ") and f"host key CHANGED (now {answered}" in reason
    assert "console output" in reason and "is terminated" in reason and "targets trust" not in reason
    assert "never-runs" not in hml("logs", summary["run_id"]).stdout
    assert summary["instance_cost_usd"] > 0  # it ran until refused: the bill says so


def test_budget_that_would_be_passed_refuses_before_launch(tmp_path, aws_bed, mlflow_server, no_leak):
    import boto3

    budgets = boto3.client("budgets", region_name="us-east-1", endpoint_url=aws_bed.endpoint)
    account = boto3.client(
        "sts", region_name="us-east-1", endpoint_url=aws_bed.endpoint
    ).get_caller_identity()
    budgets.create_budget(
        AccountId=account["Account"],
        Budget={"BudgetName": "ml-team", "BudgetLimit": {"Amount": "5", "Unit": "USD"},
                "TimeUnit": "MONTHLY", "BudgetType": "COST"},
    )  # fmt: skip
    profile = aws_profile(tmp_path, aws_bed, mlflow_server.url, market="on-demand", budget="ml-team")
    job = write_job(tmp_path / "w", run="true", max_runtime="10h")  # 10 h x 0.526 USD > 5 USD
    out = hml("submit", str(job), "--target", "cloud", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 2 and "budget 'ml-team'" in out.stderr and "Traceback" not in out.stderr
    cheap = write_job(tmp_path / "c", run="echo fits", max_runtime="1h")
    ok = hml("submit", str(cheap), "--target", "cloud", env={"HML_CONFIG": str(profile)})
    assert ok.returncode == 0, ok.stderr


def test_gc_reaps_the_instances_of_a_runner_killed_for_good(tmp_path, aws_bed, mlflow_server, no_leak):
    profile = aws_profile(tmp_path, aws_bed, mlflow_server.url)
    env = {"HML_CONFIG": str(profile)}
    job = write_job(tmp_path / "w", run="echo up; sleep 300")
    summary, _ = submit_json(str(job), "--target", "cloud", "--detach", env=env)
    run_id = summary["run_id"]
    wait_status(run_id, {"RUNNING"}, timeout=90)
    record_path = Path(summary["log"]).parent / "record.json"
    os.kill(json.loads(record_path.read_text())["supervisor_pid"], signal.SIGKILL)
    record = json.loads(record_path.read_text())
    record["status"], record["reason"] = "FAILED", "runner lost"  # the runner's state says: over
    record_path.write_text(json.dumps(record))
    assert aws_bed.instances(run_id), "the instance should still run before gc"
    out = hml("gc", env=env)
    assert out.returncode == 0, out.stderr
    (inst,) = aws_bed.instances(run_id, states=("shutting-down", "terminated"))
    assert f"terminated {inst['InstanceId']} of run {run_id}" in out.stdout
    assert status(run_id)["status"] == "FAILED"


def test_burst_to_aws_when_onprem_is_full(tmp_path, aws_bed, ssh_bed, mlflow_server, no_leak):
    known = tmp_path / "known_hosts"
    known.write_text(ssh_bed.known_hosts_text())
    onprem = ssh_bed.target(known)
    onprem["hosts"] = [{**h, "gpus": 1} for h in onprem["hosts"]]
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "tracking_uri": mlflow_server.url,
                "placement": ["onprem", "cloud"],
                "targets": {"onprem": onprem, "cloud": aws_bed.target()},
            }
        )
    )
    env = {"HML_CONFIG": str(profile)}
    held = write_job(tmp_path / "h", run="echo placed; sleep 300", resources={"gpus": 1})
    job = write_job(tmp_path / "w", run="echo placed", resources={"gpus": 1})
    runs = []
    for _ in range(len(onprem["hosts"])):  # fill every on-prem GPU
        summary, out = submit_json(str(held), "--target", "auto", "--detach", env=env)
        assert out.returncode == 0 and summary["target"] == "onprem", out.stderr
        runs.append(summary["run_id"])
        wait_status(summary["run_id"], {"RUNNING"}, env=env)
    dry = hml("submit", str(job), "--target", "auto", "--dry-run", "-o", "json", env=env)
    assert dry.returncode == 0, dry.stderr
    explained = json.loads(dry.stdout)
    assert explained["target"] == "cloud" and explained["placement"]["onprem"].startswith("no room now")
    summary, out = submit_json(str(job), "--target", "auto", env=env)
    assert out.returncode == 0 and summary["target"] == "cloud" and summary["status"] == "FINISHED", (
        out.stderr
    )
    tags = mlflow_server.client().get_run(summary["run_id"]).data.tags
    assert tags["hml.placement"] == "cloud" and "room now" in tags["hml.placement_reason"]
    assert "; not taken: onprem: no room now" in tags["hml.placement_reason"]
    for run_id in runs:
        hml("cancel", run_id, env=env)


def test_spot_refused_then_on_demand(tmp_path, aws_bed, mlflow_server, no_leak):
    from tests.awsbed import SpotRefusingProxy

    proxy = SpotRefusingProxy(aws_bed.endpoint)
    proxy.start()
    try:
        env = {"AWS_ENDPOINT_URL": proxy.url}
        profile = aws_profile(tmp_path, aws_bed, mlflow_server.url, market="spot-then-on-demand")
        job = write_job(tmp_path / "w", run="echo on-demand-after-all")
        summary, out = submit_json(str(job), "--target", "cloud", env={**env, "HML_CONFIG": str(profile)})
        assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr
        assert proxy.refused == 1
        assert "on-demand)" in hml("logs", summary["run_id"]).stdout  # the started-on line names the market
        only_spot = aws_profile(tmp_path, aws_bed, mlflow_server.url, market="spot")
        failed, out = submit_json(
            str(job), "--target", "cloud", "--no-wait", env={**env, "HML_CONFIG": str(only_spot)}
        )
        assert out.returncode == 1 and "InsufficientInstanceCapacity" in failed["reason"], failed
        assert proxy.refused == 2
    finally:
        proxy.close()


@pytest.mark.slow
def test_two_node_ddp_on_two_instances(tmp_path, aws_bed, mlflow_server, no_leak):
    profile = aws_profile(tmp_path, aws_bed, mlflow_server.url)
    summary = two_node_digits(profile, "cloud", 4, mlflow_server, accuracy=0.85)
    hosts = json.loads((Path(summary["log"]).parent / "record.json").read_text())["usage"]["hosts"]
    prefix = cidr(int(aws_bed.endpoint.rsplit(":", 1)[1])).rsplit(".", 1)[0] + "."
    assert len(hosts) == 2 and all(prefix in h for h in hosts)
