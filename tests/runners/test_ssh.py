"""The ssh target against real sshd hosts (tests/sshbed.py) and a real MLflow server."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from runners.backends.nodes import torchrun_line
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

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"


def ssh_profile(tmp_path: Path, bed, tracking_uri: str, trusted: bool = True, **extra) -> Path:
    known = tmp_path / "known_hosts"
    if trusted:
        known.write_text(bed.known_hosts_text())
    profile = tmp_path / "hybridml.yaml"
    target = bed.target(known, **extra)
    profile.write_text(yaml.safe_dump({"tracking_uri": tracking_uri, "targets": {"onprem": target}}))
    return profile


def record_of(run_id: str) -> dict:
    return json.loads((Path(status(run_id)["log"]).parent / "record.json").read_text())


class TestSsh(BackendContract):
    @pytest.fixture
    def target(self, tmp_path, ssh_bed, mlflow_server):
        return ssh_profile(tmp_path, ssh_bed, mlflow_server.url), "onprem"

    @pytest.fixture
    def host_dirs(self, ssh_bed):
        return [ssh_bed.root / "shared-root", *(h.remote_root for h in ssh_bed.hosts)]


def test_unknown_host_key_is_refused_with_fingerprint_and_fix(tmp_path, ssh_bed, mlflow_server):
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url, trusted=False)
    job = write_job(tmp_path / "w", run="true")
    out = hml("submit", str(job), "--target", "onprem", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 2
    assert ssh_bed.hosts[0].fingerprint() in out.stderr
    assert "hml targets trust onprem" in out.stderr and "Traceback" not in out.stderr
    trusted = hml("targets", "trust", "onprem", "--yes", env={"HML_CONFIG": str(profile)})
    assert trusted.returncode == 0, trusted.stderr
    assert all(h.fingerprint() in trusted.stdout for h in ssh_bed.hosts)
    again = hml("submit", str(job), "--target", "onprem", env={"HML_CONFIG": str(profile)})
    assert again.returncode == 0, again.stderr


def test_trust_without_yes_and_no_answer_records_nothing(tmp_path, ssh_bed, mlflow_server):
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url, trusted=False)
    import subprocess

    from tests.runners.helpers import HML

    out = subprocess.run(
        [HML, "--config", str(profile), "targets", "trust", "onprem"],
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert ssh_bed.hosts[0].fingerprint() in out.stdout
    assert not (tmp_path / "known_hosts").exists()


def test_known_hosts_defaults_to_the_one_in_hml_home(tmp_path, ssh_bed, hml_home):
    target = ssh_bed.target(tmp_path / "unused")
    del target["known_hosts"]
    profile = tmp_path / "hybridml.yaml"  # the embedded default's store: no tracking server needed
    profile.write_text(yaml.safe_dump({"targets": {"onprem": target}}))
    job = write_job(tmp_path / "w", run="true")
    env = {"HML_CONFIG": str(profile)}
    untrusted = hml("submit", str(job), "--target", "onprem", "--dry-run", env=env)
    assert untrusted.returncode == 2 and "hml targets trust onprem" in untrusted.stderr
    trusted = hml("targets", "trust", "onprem", "--yes", env=env)
    assert trusted.returncode == 0, trusted.stderr
    recorded = (hml_home / "known_hosts").read_text()
    assert all(f"[{h.address}]:{h.port}" in recorded for h in ssh_bed.hosts), recorded
    ready = hml("submit", str(job), "--target", "onprem", "--dry-run", env=env)
    assert ready.returncode == 0, ready.stderr
    assert not (tmp_path / "unused").exists()


def test_changed_host_key_is_refused(tmp_path, ssh_bed, mlflow_server):
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url)
    host = ssh_bed.hosts[1]
    old = host.fingerprint()
    host.rotate_host_key()  # later tests write known_hosts afresh from the bed: they see the new key
    job = write_job(tmp_path / "w", run="true")
    out = hml("submit", str(job), "--target", "onprem", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 2
    assert "CHANGED" in out.stderr and host.fingerprint() in out.stderr and old in out.stderr


def test_staging_sends_only_what_changed_and_refuses_oversize(tmp_path, ssh_bed, mlflow_server):
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url, max_workdir_mb=1)
    work = tmp_path / "w"
    (work / "pkg").mkdir(parents=True)
    for i in range(30):
        (work / "pkg" / f"m{i}.py").write_text(f"X = {i}\n" * 20)
    (work / "data.bin").write_bytes(b"x" * 2_000_000)
    (work / ".hmlignore").write_text("data.bin\n")
    job = write_job(work, run="ls pkg | wc -l")

    def staged_bytes() -> int:
        summary, out = submit_json(str(job), "--target", "onprem", env={"HML_CONFIG": str(profile)})
        assert out.returncode == 0, out.stderr
        return sum(n["bytes_staged"] for n in record_of(summary["run_id"])["handle"]["nodes"])

    staged_bytes()
    assert staged_bytes() == 0  # unchanged: no file content sent
    (work / "pkg" / "m3.py").write_text("X = 'changed'\n")
    assert staged_bytes() == len("X = 'changed'\n")
    (work / ".hmlignore").write_text("")  # now the 2 MB file counts: over the 1 MB limit
    out = hml("submit", str(job), "--target", "onprem", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 2 and "max_workdir_mb" in out.stderr and "data.bin" in out.stderr


def test_gpus_are_never_shared_and_no_wait_refuses(tmp_path, ssh_bed, mlflow_server):
    hosts = [{**h, "gpus": 1} for h in ssh_bed.target(tmp_path / "k")["hosts"]]
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url, hosts=hosts)
    env = {"HML_CONFIG": str(profile)}
    job = write_job(
        tmp_path / "w",
        run='echo "devices=$CUDA_VISIBLE_DEVICES host=$HML_NODE_IPS"; sleep 300',
        resources={"gpus": 1},
    )
    first, _ = submit_json(str(job), "--target", "onprem", "--detach", env=env)
    second, _ = submit_json(str(job), "--target", "onprem", "--detach", env=env)
    wait_status(first["run_id"], {"RUNNING"}, env=env)
    wait_status(second["run_id"], {"RUNNING"}, env=env)
    hosts_used = {tuple(record_of(r["run_id"])["usage"]["hosts"]) for r in (first, second)}
    assert len(hosts_used) == 2, "two 1-GPU jobs were put on the same 1-GPU host"
    third, out = submit_json(str(job), "--target", "onprem", "--no-wait", env=env)
    assert out.returncode == 1 and third["status"] == "FAILED" and "no capacity" in third["reason"]
    for r in (first, second):
        assert hml("cancel", r["run_id"], env=env).returncode == 0
    time.sleep(0.5)
    fourth, out = submit_json(str(job), "--target", "onprem", "--detach", env=env)  # freed again
    wait_status(fourth["run_id"], {"RUNNING"}, env=env)
    deadline = time.monotonic() + 30
    while "devices=0" not in hml("logs", fourth["run_id"]).stdout and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "devices=0" in hml("logs", fourth["run_id"]).stdout
    claims = [p for h in ssh_bed.hosts for p in (h.remote_root / "gpus").glob("[0-9]*")]
    assert any(fourth["run_id"] in p.read_text() for p in claims), "the running job holds no claim"
    hml("cancel", fourth["run_id"], env=env)
    # teardown released the claims explicitly: none names a run that has ended
    claims = [p for h in ssh_bed.hosts for p in (h.remote_root / "gpus").glob("[0-9]*")]
    ended = (first["run_id"], second["run_id"], fourth["run_id"])
    assert not [p for p in claims if any(r in p.read_text() for r in ended)]


def test_torchrun_wrapping():
    assert torchrun_line("python train.py --lr 1", True).startswith("python -m torch.distributed.run ")
    assert torchrun_line("python train.py --lr 1", True).endswith("--tee 3 train.py --lr 1")
    assert torchrun_line("/opt/venv/bin/python3 t.py", True).startswith("/opt/venv/bin/python3 -m torch")
    assert torchrun_line("python train.py", False) == "python train.py"
    assert torchrun_line("torchrun --nnodes $NNODES t.py", True) == "torchrun --nnodes $NNODES t.py"
    assert torchrun_line("python -m pkg.train", True) == "python -m pkg.train"
    assert torchrun_line("cd x\npython t.py", True) == "cd x\npython t.py"


def test_two_node_ddp_training_with_torchrun(tmp_path, ssh_bed, mlflow_server):
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url)
    two_node_digits(profile, "onprem", 6, mlflow_server, accuracy=0.9)


def test_cancel_multi_node_leaves_nothing_on_any_host(tmp_path, ssh_bed, mlflow_server):
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url)
    env = {"HML_CONFIG": str(profile)}
    job = write_job(tmp_path / "w", run="sleep 600 & sleep 601", num_nodes=2)
    summary, _ = submit_json(str(job), "--target", "onprem", "--detach", env=env)
    wait_status(summary["run_id"], {"RUNNING"}, env=env)
    time.sleep(1.0)
    assert all(h.processes() for h in ssh_bed.hosts), "the job does not run on both hosts"
    assert hml("cancel", summary["run_id"], env=env).returncode == 0
    deadline = time.monotonic() + 15
    while any(h.processes() for h in ssh_bed.hosts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(h.processes() for h in ssh_bed.hosts)


def test_host_dies_mid_job_retry_resumes_on_a_healthy_host(tmp_path, ssh_bed, mlflow_server):
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url)
    env = {"HML_CONFIG": str(profile)}
    summary, _ = submit_json(
        str(DIGITS / "job.yaml"),
        "--target",
        "onprem",
        "--detach",
        "--set",
        "epochs=6",
        "--set",
        f"run={PY} train.py",
        "--set",
        "epoch_sleep=1.5",
        "--set",
        "retries=1",
        env=env,
    )
    run_id = summary["run_id"]
    deadline = time.monotonic() + 180
    while "epoch 2/6" not in hml("logs", run_id).stdout and time.monotonic() < deadline:
        time.sleep(0.3)
    first_host = record_of(run_id)["usage"]["hosts"][0]
    victim = next(h for h in ssh_bed.hosts if f"{h.address}:{h.port}" in first_host)
    victim.kill()
    try:
        final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=300, env=env)
        logs = hml("logs", run_id).stdout
        assert final["status"] == "FINISHED", logs
        assert "unreachable" in logs and "fetched checkpoint" in logs
        assert record_of(run_id)["usage"]["hosts"][0] != first_host
        client = mlflow_server.client()
        run = wait_finalized(client, run_id)
        steps = sorted({m.step for m in client.get_metric_history(run_id, "train_loss")})
        assert steps == list(range(6)), "metrics from before the fault are lost or epochs missing"
        assert run.data.metrics["test_accuracy"] >= 0.9
    finally:
        victim.start()


def test_host_dies_without_retries_fails_within_60s(tmp_path, ssh_bed, mlflow_server):
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url)
    env = {"HML_CONFIG": str(profile)}
    job = write_job(tmp_path / "w", run="echo up; sleep 300")
    summary, _ = submit_json(str(job), "--target", "onprem", "--detach", env=env)
    run_id = summary["run_id"]
    wait_status(run_id, {"RUNNING"}, env=env)
    host = record_of(run_id)["usage"]["hosts"][0]
    victim = next(h for h in ssh_bed.hosts if f"{h.address}:{h.port}" in host)
    victim.freeze()  # a hung host / cut network: connections time out rather than fail fast
    try:
        cut = time.monotonic()
        final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=120, env=env)
        assert final["status"] == "FAILED" and "unreachable" in final["reason"]
        assert time.monotonic() - cut < 90
        assert wait_finalized(mlflow_server.client(), run_id).info.status == "FAILED"
    finally:
        victim.thaw()


def test_max_cost_usd_stops_the_job_and_cost_is_recorded(tmp_path, ssh_bed, mlflow_server):
    hosts = [{**h, "gpus": 1} for h in ssh_bed.target(tmp_path / "k")["hosts"]]
    # one GPU hour costs 3600 USD here: the job burns one dollar a second
    profile = ssh_profile(tmp_path, ssh_bed, mlflow_server.url, hosts=hosts, gpu_hour_usd=3600)
    job = write_job(tmp_path / "w", run="sleep 120", resources={"gpus": 1}, max_cost_usd=3)
    started = time.monotonic()
    summary, out = submit_json(str(job), "--target", "onprem", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 1 and time.monotonic() - started < 60
    assert summary["status"] == "FAILED" and "max_cost_usd" in summary["reason"]
    run = wait_finalized(mlflow_server.client(), summary["run_id"])
    assert 3 <= run.data.metrics["hml.cost_usd"] < 15
