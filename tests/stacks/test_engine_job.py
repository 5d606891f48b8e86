"""Infrastructure to job, end to end (issue 25, item 3): the platform stack itself
(``stacks/platform``, unchanged) goes up under the real Pulumi engine on the Kubernetes bed, its
``runnerProfile`` output becomes ``hybridml.yaml`` exactly as a platform engineer hands it over
(``pulumi stack output --json runnerProfile > hybridml.yaml``), and ``hml submit --target
gpu-k8s`` runs the digits example on the GPU node the stack labelled and tainted.

The stack's config (``Pulumi.bed.yaml``, written below) is an on-prem stack with two switches
for the bed: ``storage.create_buckets: false`` (the buckets would be made through the AWS
provider aimed at the on-prem S3 endpoint, and that provider cannot be built here:
docs/runbooks/pulumi-engine.md) and ``tracking.await_ingress: false`` (no ingress controller).
The stack's MLflow Deployment runs on the bed as an idle process (the bed runs no images), so
``tracking.tracking_uri`` hands the runners the test's MLflow server instead, as a company's
internal proxy address would be handed out; the job's metrics are then read back there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.k8sbed import K8sBed
from tests.pulumibed import REPO, engine_env
from tests.runners.helpers import DIGITS, hml, submit_json, wait_finalized
from tests.stacks.test_engine_up import ORG, pulumi

pytestmark = [pytest.mark.slow]

STACK = "bed"
POOL = "gpu"
TARGET = f"{POOL}-k8s"
MONITORING = "monitoring"
"""The namespace monitoring's objects go to: a cluster's Prometheus stack (kube-prometheus) has it."""


def _stack_config(mlflow_url: str, textfile: Path) -> dict[str, object]:
    return {
        "config": {
            "platform:org": {"team": ORG["team"], "cost_center": ORG["cost-center"], "environment": "bed"},
            "platform:storage": {
                "create_buckets": False,  # no AWS provider here, not even for the on-prem endpoint
                "buckets": {"datasets": {"platform": "onprem"}, "artifacts": {"platform": "onprem"}},
                "data_scientist_principals": ["data-scientists"],
            },
            "platform:tracking": {
                "cluster": "onprem",
                "hostname": "mlflow.bed.example.com",
                "replicas": 1,
                "await_ingress": False,  # the bed has no ingress controller to give an address
                "tracking_uri": mlflow_url,
            },
            "platform:budget": {"monthly_usd": 3000, "notify": ["ml-leads@example.com"]},
            "platform:onprem": {
                "kube_context": "k8sbed",
                "s3_endpoint": "https://minio.bed.example.com:9000",
                "telemetry_textfile": str(textfile),
                "pools": {POOL: {"nodes": ["engine-0"]}},
            },
        }
    }


@pytest.fixture
def monitoring_namespace(k8s_bed: K8sBed) -> str:
    from kubernetes import client

    core = k8s_bed.core()
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=MONITORING))
    try:
        core.create_namespace(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    return MONITORING


def test_the_stacks_runner_profile_runs_the_digits_example_on_the_pool_it_made(
    k8s_bed: K8sBed,
    engine_node: str,
    prometheus_crds: list[str],
    monitoring_namespace: str,
    mlflow_server,
    tmp_path: Path,
):
    project = tmp_path / "platform"
    project.mkdir()
    shutil.copyfile(REPO / "stacks" / "platform" / "__main__.py", project / "__main__.py")
    meta = yaml.safe_load((REPO / "stacks" / "platform" / "Pulumi.yaml").read_text())
    meta["runtime"]["options"]["virtualenv"] = str(Path(sys.executable).parent.parent)
    (project / "Pulumi.yaml").write_text(yaml.safe_dump(meta))
    textfile = tmp_path / "textfile" / "hybridml.prom"
    (project / f"Pulumi.{STACK}.yaml").write_text(yaml.safe_dump(_stack_config(mlflow_server.url, textfile)))
    env = engine_env(tmp_path / "state", tmp_path / "pulumi-home", KUBECONFIG=str(k8s_bed.kubeconfig))
    pulumi(project, env, "stack", "init", STACK)
    for key, value in {
        "trackingDbUri": "postgresql://mlflow:pw@pg.bed:5432/mlflow",
        "trackingAdminPassword": "admin-pw",
        "s3AccessKey": "bed-access",
        "s3SecretKey": "bed-secret",
    }.items():
        pulumi(project, env, "config", "set", "--secret", f"platform:{key}", value)

    up = pulumi(project, env, "up", "--yes", "--skip-preview")
    assert "Traceback" not in up.stdout + up.stderr, up.stdout  # nor the language host's, at its end
    try:
        again = pulumi(project, env, "preview", "--expect-no-changes")  # exit 255 on any change
        assert "20 unchanged" in again.stdout, again.stdout
        profile = tmp_path / "hybridml.yaml"
        with profile.open("w") as out:  # pulumi stack output --json runnerProfile > hybridml.yaml
            subprocess.run(
                ["pulumi", "stack", "output", "--json", "runnerProfile"],
                cwd=project,
                env=env,
                stdout=out,
                check=True,
                timeout=120,
            )
        handed = yaml.safe_load(profile.read_text())
        target = handed["targets"][TARGET]
        assert target["context"] == "k8sbed" and target["namespace"] == "hybridml"
        assert target["node_selector"] == {"hybridml.io/gpu-pool": POOL}
        node = k8s_bed.core().read_node(engine_node)
        assert node.metadata.labels["hybridml.io/gpu-pool"] == POOL  # the stack labelled it
        assert handed["tracking_uri"] == mlflow_server.url
        assert handed["targets"][TARGET]["telemetry"]["prometheus_textfile"] == str(textfile)

        hml_env = {
            "HML_CONFIG": str(profile),
            "KUBECONFIG": str(k8s_bed.kubeconfig),
            "PYTHONPATH": str(REPO),  # this checkout's runner, whatever the venv's editable install
        }
        # the digits example as it is; the bed's "image" is this machine, so the test interpreter
        # (which has torch) runs it; one GPU, so only the stack's pool can take it
        sets = [f"run={sys.executable} train.py", "epochs=2", "resources.gpus=1"]
        args = [a for s in sets for a in ("--set", s)]
        summary, out = submit_json(
            str(DIGITS / "job.yaml"), "--target", TARGET, *args, env=hml_env, timeout=600
        )
        logs = hml("logs", summary["run_id"], env=hml_env).stdout
        assert out.returncode == 0, out.stderr + logs
        assert summary["status"] == "FINISHED", logs
        assert f"[hml] running on {engine_node}" in logs  # the node the stack labelled and tainted
        run = wait_finalized(mlflow_server.client(), summary["run_id"])
        assert run.data.metrics["test_accuracy"] > 0.8
        counters = textfile.read_text()  # the run's end, where the stack's Prometheus rules read it
        assert f'hybridml_jobs_total{{team="{ORG["team"]}",status="FINISHED"}} 1' in counters, counters
        assert f'hybridml_gpu_seconds_total{{team="{ORG["team"]}"}}' in counters
    finally:
        pulumi(project, env, "destroy", "--yes", "--skip-preview")
    node = k8s_bed.core().read_node(engine_node)
    assert "hybridml.io/gpu-pool" not in (node.metadata.labels or {})
    summary_after = json.loads(pulumi(project, env, "stack", "export").stdout)
    assert summary_after["deployment"].get("resources", []) == []
