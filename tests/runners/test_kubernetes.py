"""The kubernetes target against a real control plane (tests/k8sbed.py: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok's GPU nodes and the bed's pod executor) and a
real MLflow server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from hmlkit.profile import target_problems
from tests.k8sbed import GPU, Pool
from tests.runners.contract import BackendContract
from tests.runners.helpers import (
    hml,
    status,
    submit_json,
    two_node_digits,
    wait_finalized,
    wait_log,
    wait_status,
    write_job,
)
from tests.runners.test_data import lake  # noqa: F401  (a fixture)

ENDED = {"FINISHED", "FAILED", "KILLED"}
RUN_LABEL = "hml.dev/run"


def k8s_profile(tmp_path: Path, k8s_bed, tracking_uri: str, **extra) -> Path:
    profile = tmp_path / "hybridml.yaml"
    targets = {"cluster": k8s_bed.target(**extra)}
    profile.write_text(yaml.safe_dump({"tracking_uri": tracking_uri, "targets": targets}))
    return profile


def labelled(k8s_bed, run_id: str) -> list[str]:
    """Every object of the kinds a run makes that carries the run's label."""
    from kubernetes import client

    api = k8s_bed.client()
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    selector = f"{RUN_LABEL}={run_id}"
    found = []
    for kind, fn in (
        ("job", batch.list_job_for_all_namespaces),
        ("pod", core.list_pod_for_all_namespaces),
        ("secret", core.list_secret_for_all_namespaces),
        ("configmap", core.list_config_map_for_all_namespaces),
        ("service", core.list_service_for_all_namespaces),
    ):
        found += [f"{kind}/{o.metadata.name}" for o in fn(label_selector=selector).items]
    return found


def pods_of(k8s_bed, run_id: str) -> list:
    return k8s_bed.pods(f"{RUN_LABEL}={run_id}")


def wait_gone(k8s_bed, run_id: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := labelled(k8s_bed, run_id)) and time.monotonic() < deadline:
        time.sleep(0.3)
    return left


@pytest.fixture
def profile(tmp_path, k8s_bed, mlflow_server) -> Path:
    return k8s_profile(tmp_path, k8s_bed, mlflow_server.url)


class TestKubernetes(BackendContract):
    @pytest.fixture
    def target(self, profile):
        return profile, "cluster"

    @pytest.fixture
    def target_logs(self, k8s_bed):
        return k8s_bed.log_tails

    @pytest.fixture
    def host_dirs(self, k8s_bed):
        """The whole bed: etcd's data (Secrets encrypted at rest), the pods' files and logs."""
        return [k8s_bed.root]


def test_the_profile_contract_names_the_field_and_the_fix():
    assert target_problems({"kind": "kubernetes"}) == ["image: required field is missing"]
    both = {"kind": "kubernetes", "image": "x", "in_cluster": True, "context": "c"}
    assert any("remove kubeconfig and context" in p for p in target_problems(both))
    bad = {"kind": "kubernetes", "image": "x", "tolerations": [{"key": "k", "effect": "Sometimes"}]}
    assert any(p.startswith("tolerations.0.effect") for p in target_problems(bad))


def test_a_gpu_job_lands_on_a_tainted_gpu_node_with_its_gpus_requested(profile, tmp_path, k8s_bed):
    job = write_job(tmp_path / "w", run="echo on $HOSTNAME; echo rank $NODE_RANK", resources={"gpus": 1})
    summary, out = submit_json(str(job), "--target", "cluster", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    assert summary["status"] == "FINISHED"
    logs = hml("logs", summary["run_id"]).stdout
    assert "rank 0" in logs
    assert wait_gone(k8s_bed, summary["run_id"]) == [], "teardown left objects with the run's label"


def test_without_the_pools_toleration_the_job_stays_queued_with_the_schedulers_reason(
    tmp_path, k8s_bed, mlflow_server
):
    profile = k8s_profile(tmp_path, k8s_bed, mlflow_server.url, tolerations=[])
    job = write_job(tmp_path / "w", run="echo never", resources={"gpus": 1})
    summary, out = submit_json(str(job), "--target", "cluster", "--detach", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    run_id = summary["run_id"]
    try:
        deadline = time.monotonic() + 60
        while "untolerated taint" not in (state := status(run_id))["reason"]:
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        assert (
            state["status"] == "RUNNING"
            and "queued in Kubernetes: 0/3 nodes are available" in state["reason"]
        )
        assert all(not p.spec.node_name for p in pods_of(k8s_bed, run_id))
    finally:
        assert hml("cancel", run_id).returncode == 0
    assert status(run_id)["status"] == "KILLED"
    assert pods_of(k8s_bed, run_id) == [], "cancel left a pod"
    assert wait_gone(k8s_bed, run_id) == []


def test_queued_while_the_gpus_are_taken_then_started_and_auto_bursts_elsewhere(
    profile, tmp_path, k8s_bed, mlflow_server
):
    env = {"HML_CONFIG": str(profile)}
    full = write_job(tmp_path / "a", run="echo filling; sleep 300", num_nodes=2, resources={"gpus": 2})
    first, out = submit_json(str(full), "--target", "cluster", "--detach", env=env)
    assert out.returncode == 0, out.stderr
    try:
        wait_log(first["run_id"], "[node 1] filling")
        small = write_job(tmp_path / "b", run="echo my turn", resources={"gpus": 1})
        second, out = submit_json(str(small), "--target", "cluster", "--detach", env=env)
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 60
        while f"Insufficient {GPU}" not in (state := status(second["run_id"]))["reason"]:
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        burst = yaml.safe_load(profile.read_text())
        burst["targets"]["local"] = {"kind": "local"}
        burst["placement"] = ["cluster", "local"]
        profile.write_text(yaml.safe_dump(burst))
        cpu_only = write_job(tmp_path / "c", run="echo anywhere", resources={"gpus": 1})
        dry = hml("submit", str(cpu_only), "--target", "auto", "--dry-run", "-o", "json", env=env)
        assert dry.returncode == 0, dry.stderr
        placed = json.loads(dry.stdout)
        assert placed["placement"]["cluster"].startswith("no room now: 0 node(s) of the pool"), placed
        queued_since = time.monotonic()
        time.sleep(4)
    finally:
        assert hml("cancel", first["run_id"]).returncode == 0
    queued_for = time.monotonic() - queued_since
    final = wait_status(second["run_id"], ENDED, timeout=120)
    assert final["status"] == "FINISHED", hml("logs", second["run_id"]).stdout
    logs = hml("logs", second["run_id"]).stdout
    assert f"Insufficient {GPU}" in logs and "my turn" in logs
    run = wait_finalized(mlflow_server.client(), second["run_id"])
    assert run.data.metrics["hml.duration_s"] < queued_for  # the wait in the queue is not charged


def test_two_nodes_get_an_indexed_job_with_each_nodes_output(profile, tmp_path, k8s_bed):
    run = 'echo "rank=$NODE_RANK of $NNODES master=$MASTER_ADDR:$MASTER_PORT"'
    job = write_job(tmp_path / "w", run=run, num_nodes=2, resources={"gpus": 1, "memory": "1GB"})
    summary, out = submit_json(str(job), "--target", "cluster", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    logs = hml("logs", summary["run_id"]).stdout
    # the rendezvous is the headless Service's first pod, which the bed's DNS gives as 127.0.0.1
    assert "[node 0] rank=0 of 2 master=127.0.0.1:29500" in logs
    assert "[node 1] rank=1 of 2 master=127.0.0.1:29500" in logs
    short = summary["run_id"][:12]
    job = json.loads((Path(summary["log"]).parent / "record.json").read_text())["handle"]["job"]
    assert job == f"hml-{short}-0"


def test_an_evicted_pod_gives_the_reason_and_nothing_is_left(profile, tmp_path, k8s_bed):
    from kubernetes import client

    job = write_job(tmp_path / "w", run="echo up; sleep 300", resources={"gpus": 1})
    summary, out = submit_json(str(job), "--target", "cluster", "--detach", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    run_id = summary["run_id"]
    wait_log(run_id, "up")
    (pod,) = pods_of(k8s_bed, run_id)
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace="default"))
    k8s_bed.core().create_namespaced_pod_eviction(pod.metadata.name, "default", eviction)
    final = wait_status(run_id, ENDED, timeout=60)
    assert final["status"] == "FAILED"
    assert "evicted" in final["reason"] or "disrupted" in final["reason"], final
    assert wait_gone(k8s_bed, run_id) == []


def test_a_lost_node_ends_the_run_with_the_reason(profile, tmp_path, k8s_bed):
    job = write_job(tmp_path / "w", run="echo up; sleep 300", resources={"gpus": 2})
    summary, out = submit_json(str(job), "--target", "cluster", "--detach", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    run_id = summary["run_id"]
    wait_log(run_id, "up")
    (pod,) = pods_of(k8s_bed, run_id)
    node = pod.spec.node_name
    k8s_bed.delete_node(node)
    try:
        final = wait_status(run_id, ENDED, timeout=120)
    finally:
        k8s_bed.add_node(Pool("gpu", 2, gpus=2, tainted=True), int(node.rsplit("-", 1)[1]))
    assert final["status"] == "FAILED"
    assert "node" in final["reason"] and "lost" in final["reason"] or "disrupted" in final["reason"], final
    assert wait_gone(k8s_bed, run_id) == []


def test_gc_deletes_only_this_runners_objects_whose_run_is_gone(profile, tmp_path, k8s_bed, hml_home):
    import os
    import shutil
    import signal

    job = write_job(tmp_path / "w", run="echo up; sleep 300")
    other_runner = {"HML_CONFIG": str(profile), "HML_HOME": str(tmp_path / "elsewhere")}
    theirs, _ = submit_json(str(job), "--target", "cluster", "--detach", env=other_runner)
    ours, _ = submit_json(str(job), "--target", "cluster", "--detach", env={"HML_CONFIG": str(profile)})
    wait_log(ours["run_id"], "up")
    record = json.loads((hml_home / "runs" / ours["run_id"] / "record.json").read_text())
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    shutil.rmtree(hml_home / "runs" / ours["run_id"])  # its supervisor is gone, the run unknown here
    out = hml("gc", env={"HML_CONFIG": str(profile)})
    assert out.stdout.strip() == (
        f"cluster: deleted the Kubernetes objects of run {ours['run_id']} in default (run over or unknown)"
    )
    assert wait_gone(k8s_bed, ours["run_id"]) == [], "gc left objects of the orphaned run"
    assert [p.status.phase for p in pods_of(k8s_bed, theirs["run_id"])] == ["Running"]
    assert hml("cancel", theirs["run_id"], env=other_runner).returncode == 0
    assert wait_gone(k8s_bed, theirs["run_id"]) == []


def test_inputs_are_fetched_into_each_pod_and_their_urls_never_reach_the_job(
    tmp_path,
    k8s_bed,
    lake,  # noqa: F811  (the imported fixture)
    mlflow_server,
):
    """A dataset snapshot as ``inputs:`` of a two-pod job: each pod fetches it from the store
    (presigned URLs, hash-checked) into a read-only tree; the plan with the URLs travels in the
    run's Secret and is gone from the job's environment."""
    from tests.runners.test_data import CHECK, _seen_on_every_node, data, put_all

    s3, bucket, profile = lake
    files = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 8}
    put_all(s3, bucket, "kube", files)
    data(profile, "snapshot", "kube", f"s3://{bucket}/kube")
    raw = yaml.safe_load(profile.read_text())
    raw["targets"]["cluster"] = k8s_bed.target()
    profile.write_text(yaml.safe_dump(raw))
    work = tmp_path / "work"
    work.mkdir()
    (work / "check.py").write_text(CHECK)
    run = 'python3 -B check.py && echo "PLAN-SEEN=${HML_INPUTS_PLAN:-none}"'
    job = write_job(work, run=run, num_nodes=2, inputs={"train": "kube@v1"})
    summary, out = submit_json(str(job), "--target", "cluster", env={"HML_CONFIG": str(profile)})
    logs = hml("logs", summary["run_id"]).stdout
    assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr + logs
    _seen_on_every_node(logs, files, 2)
    assert logs.count("PLAN-SEEN=none") == 2 and "X-Amz-Signature" not in logs, logs
    assert wait_finalized(mlflow_server.client(), summary["run_id"]).data.tags["hml.input.train"] == "kube@v1"
    assert wait_gone(k8s_bed, summary["run_id"]) == []


def test_two_node_ddp_training_through_the_indexed_job(profile, mlflow_server):
    """The digits example, unmodified, as 2 pods of one Indexed Job under torchrun, meeting at
    the headless Service's first pod; rank 0 logs to MLflow."""
    two_node_digits(profile, "cluster", 3, mlflow_server, accuracy=0.8)


def test_an_evicted_pod_is_retried_and_the_retry_resumes_from_its_checkpoint(profile, k8s_bed, mlflow_server):
    """The digits example with one retry: its pod is evicted after an epoch; the new attempt (a
    new Job, a fresh pod) fetches the checkpoint from the MLflow run and no epoch is lost."""
    import sys

    from kubernetes import client

    from tests.runners.helpers import DIGITS

    env = {"HML_CONFIG": str(profile)}
    sets = [f"run={sys.executable} train.py", "epochs=6", "epoch_sleep=1.5", "retries=1"]
    args = [a for s in sets for a in ("--set", s)]
    summary, out = submit_json(str(DIGITS / "job.yaml"), "--target", "cluster", "--detach", *args, env=env)
    assert out.returncode == 0, out.stderr
    run_id = summary["run_id"]
    wait_log(run_id, "epoch 2/6", timeout=180)
    (pod,) = pods_of(k8s_bed, run_id)
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace="default"))
    k8s_bed.core().create_namespaced_pod_eviction(pod.metadata.name, "default", eviction)
    final = wait_status(run_id, ENDED, timeout=300)
    logs = hml("logs", run_id).stdout
    assert final["status"] == "FINISHED", logs
    assert "evicted" in logs or "disrupted" in logs, logs
    assert "fetched checkpoint" in logs and "resuming from checkpoint" in logs, logs
    mlclient = mlflow_server.client()
    wait_finalized(mlclient, run_id)
    steps = sorted({m.step for m in mlclient.get_metric_history(run_id, "train_loss")})
    assert steps == list(range(6)), "epochs lost or repeated across the retry"
    assert wait_gone(k8s_bed, run_id) == []
