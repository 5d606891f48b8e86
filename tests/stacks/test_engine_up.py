"""`pulumi up` for real: the Pulumi engine (tests/pulumibed.py) and the Kubernetes provider deploy
the on-prem components' Kubernetes parts onto the Kubernetes bed (tests/k8sbed.py).

A file state backend in the test's directory, a stack passphrase, nothing fetched. The program is
made of the project's own components (the on-prem GPU pool's node labels, taint and device
plugin DaemonSet; the on-prem key vault's Secret, Role and RoleBinding; monitoring's
PrometheusRule, AlertmanagerConfig and Grafana ConfigMap, the prometheus-operator's CRDs installed
first; the tracking server's Secret, ServiceAccount, Deployment, Service and Ingress). Every
object is then read back through the Kubernetes API with the organisation's labels; a second
``up`` changes nothing; a config change (one more reader) updates the RoleBinding alone;
``destroy`` removes what ``up`` made, and gives the node back without the pool's labels.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8sbed import K8sBed
from tests.pulumibed import PROMETHEUS_CRDS, engine_env
from tests.stacks.conftest import NODE

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "hml-engine"
ORG = {"team": "ml-platform", "cost-center": "cc-4711", "environment": "bed"}
SECRET_VALUE = "s3cr3t-from-pulumi-config"
MAIL = "ml-leads@example.com"

PROGRAM = f'''
import pulumi
import pulumi_kubernetes as k8s

from components.base import OrgTags
from components.gpu_pool import GpuNodePool, GpuNodePoolArgs, OnpremPool
from components.keyvault import KeyVault, KeyVaultArgs
from components.monitoring import Budget, Monitoring, MonitoringArgs
from components.tracking import TrackingServer, TrackingServerArgs

config = pulumi.Config("bed")
tags = OrgTags(team="ml-platform", cost_center="cc-4711", environment="bed")
namespace = k8s.core.v1.Namespace(
    "ns", metadata={{"name": "{NAMESPACE}", "labels": tags.as_tags()}}
)
pool = GpuNodePool(
    "engine",
    GpuNodePoolArgs(
        platform="onprem",
        tags=tags,
        onprem=OnpremPool(nodes=["{NODE}"], namespace="{NAMESPACE}"),
    ),
    opts=pulumi.ResourceOptions(depends_on=[namespace]),
)
vault = KeyVault(
    "vault",
    KeyVaultArgs(
        platform="onprem",
        tags=tags,
        prefix="hybridml/bed",
        secrets={{"db-password": config.require_secret("dbPassword")}},
        reader_principals=config.require_object("readers"),
        namespace="{NAMESPACE}",
    ),
    opts=pulumi.ResourceOptions(depends_on=[namespace]),
)
monitoring = Monitoring(
    "alerts",
    MonitoringArgs(
        platform="onprem",
        tags=tags,
        budget=Budget(monthly_usd=3000, thresholds_percent=[80, 100], notify=["{MAIL}"]),
        gpu_pools=["engine"],
        namespace="{NAMESPACE}",
    ),
    opts=pulumi.ResourceOptions(depends_on=[namespace]),
)
tracking = TrackingServer(
    "mlflow",
    TrackingServerArgs(
        platform="onprem",
        tags=tags,
        hostname="mlflow.bed.example.com",
        replicas=1,
        # the bed has no ingress controller: nothing ever writes the Ingress's address
        await_ingress=False,
        db_uri=vault.value("db-password").apply(lambda p: f"postgresql://mlflow:{{p}}@pg:5432/mlflow"),
        admin_password=vault.value("db-password"),
        artifact_bucket="artifacts",
        namespace="{NAMESPACE}",
        s3_endpoint_url="https://minio.bed.example.com:9000",
        s3_access_key="bed-access",
        s3_secret_key=config.require_secret("dbPassword"),
    ),
    opts=pulumi.ResourceOptions(depends_on=[namespace, vault]),
)
pulumi.export("secretRefs", vault.secret_refs)
pulumi.export("trackingUri", tracking.url)
pulumi.export("dashboard", monitoring.dashboard)
pulumi.export("nodes", pool.nodes)
'''


def pulumi(
    project: Path, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["pulumi", *args, "--non-interactive"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pulumi {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text(
        "name: hml-engine-bed\n"
        "runtime:\n"
        "  name: python\n"
        "  options:\n"
        f"    virtualenv: {Path(sys.executable).parent.parent}\n"
    )
    (project / "__main__.py").write_text(PROGRAM)
    return project


def test_up_deploys_the_onprem_components_then_changes_nothing_then_destroys(
    k8s_bed: K8sBed,
    engine_node: str,
    prometheus_crds: list[str],
    tmp_path: Path,
):
    from kubernetes import client

    assert prometheus_crds == [f"{name}.monitoring.coreos.com" for name in PROMETHEUS_CRDS]

    project = _project(tmp_path)
    env = engine_env(tmp_path / "state", tmp_path / "pulumi-home", KUBECONFIG=str(k8s_bed.kubeconfig))
    pulumi(project, env, "stack", "init", "bed")
    pulumi(project, env, "config", "set", "--secret", "bed:dbPassword", SECRET_VALUE)
    pulumi(project, env, "config", "set", "--path", "bed:readers[0]", f"ServiceAccount:{NAMESPACE}:mlflow")

    up = pulumi(project, env, "up", "--yes", "--skip-preview")
    assert SECRET_VALUE not in up.stdout + up.stderr
    assert "Traceback" not in up.stdout + up.stderr, up.stdout  # nor the language host's, at its end
    state = "".join(f.read_text(errors="replace") for f in (tmp_path / "state").rglob("*") if f.is_file())
    assert "hml-engine-bed" in state and SECRET_VALUE not in state  # encrypted in the state file
    outputs = json.loads(pulumi(project, env, "stack", "output", "--json").stdout)
    assert outputs["nodes"] == [NODE]
    assert outputs["secretRefs"] == {"db-password": f"{NAMESPACE}/hybridml-bed#db-password"}

    api = k8s_bed.client()
    core, apps, rbac = client.CoreV1Api(api), client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
    custom, net = client.CustomObjectsApi(api), client.NetworkingV1Api(api)
    objects = {
        "namespace": core.read_namespace(NAMESPACE),
        "node": core.read_node(NODE),
        "daemonset": next(
            d
            for d in apps.list_namespaced_daemon_set(NAMESPACE).items
            if d.metadata.name.startswith("engine-device-plugin")
        ),
        "secret": core.read_namespaced_secret("hybridml-bed", NAMESPACE),
        "role": rbac.read_namespaced_role("hybridml-bed-reader", NAMESPACE),
        "binding": rbac.read_namespaced_role_binding("hybridml-bed-readers", NAMESPACE),
        "dashboard": core.read_namespaced_config_map("alerts-dashboard", NAMESPACE),
        "tracking-config": core.read_namespaced_secret("mlflow-config", NAMESPACE),
        "tracking-account": core.read_namespaced_service_account("mlflow", NAMESPACE),
        "tracking": apps.read_namespaced_deployment("mlflow", NAMESPACE),
        "tracking-service": core.read_namespaced_service("mlflow", NAMESPACE),
        "tracking-ingress": net.read_namespaced_ingress("mlflow", NAMESPACE),
    }
    for what, obj in objects.items():
        labels = obj.metadata.labels or {}
        assert {k: labels.get(k) for k in ORG} == ORG, (what, labels)
    custom_objects = {  # the CRDs' objects, as the API server stored them (schema-pruned)
        kind: custom.get_namespaced_custom_object(
            "monitoring.coreos.com", version, NAMESPACE, plural, f"alerts-{name}"
        )
        for kind, version, plural, name in (
            ("PrometheusRule", "v1", "prometheusrules", "rules"),
            ("AlertmanagerConfig", "v1alpha1", "alertmanagerconfigs", "routing"),
        )
    }
    for kind, obj in custom_objects.items():
        labels = obj["metadata"].get("labels", {})
        assert {k: labels.get(k) for k in ORG} == ORG, (kind, labels)

    (group,) = custom_objects["PrometheusRule"]["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert {"HybridMLGpuIdle", "HybridMLJobFailed", "HybridMLBudgetActual100"} <= set(alerts), alerts
    assert alerts["HybridMLBudgetForecasted80"]["labels"]["team"] == "ml-platform"
    assert "> 2400" in alerts["HybridMLBudgetForecasted80"]["expr"]  # 80 % of 3000 USD
    routing = custom_objects["AlertmanagerConfig"]["spec"]
    assert routing["route"]["matchers"] == [{"name": "team", "value": "ml-platform"}]
    assert routing["receivers"][0]["emailConfigs"][0]["to"] == MAIL
    dashboard = json.loads(objects["dashboard"].data["hybridml.json"])
    assert (
        dashboard["uid"] == "hybridml-ml-platform"
        and objects["dashboard"].metadata.labels["grafana_dashboard"] == "1"
    )
    tracking = objects["tracking"]
    assert tracking.status.ready_replicas == 1  # the engine waited for it: the bed runs its pod
    assert tracking.spec.template.spec.service_account_name == "mlflow"
    config_keys = set(objects["tracking-config"].data)
    assert {"MLFLOW_BACKEND_STORE_URI", "basic_auth.ini", "AWS_SECRET_ACCESS_KEY"} <= config_keys
    assert (
        SECRET_VALUE in base64.b64decode(objects["tracking-config"].data["MLFLOW_BACKEND_STORE_URI"]).decode()
    )
    ingress = objects["tracking-ingress"]
    assert ingress.metadata.annotations["pulumi.com/skipAwait"] == "true"  # no controller on the bed
    assert ingress.spec.rules[0].host == "mlflow.bed.example.com"
    assert ingress.spec.rules[0].http.paths[0].backend.service.name == "mlflow"
    assert objects["tracking-service"].spec.selector == {
        "app.kubernetes.io/name": "mlflow",
        "app.kubernetes.io/instance": "mlflow",
    }
    assert outputs["trackingUri"] == "https://mlflow.bed.example.com"
    assert outputs["dashboard"] == "alerts-dashboard"

    node = objects["node"]
    assert node.metadata.labels["hybridml.io/gpu-pool"] == "engine"
    assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
    assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in node.spec.taints or [])
    plugin = objects["daemonset"]
    assert plugin.spec.template.spec.node_selector == {"hybridml.io/gpu-pool": "engine"}
    assert plugin.status.desired_number_scheduled == 1  # the one node of the pool
    secret = objects["secret"]
    assert base64.b64decode(secret.data["db-password"]).decode() == SECRET_VALUE
    assert objects["role"].rules[0].resource_names == ["hybridml-bed"]
    assert objects["role"].rules[0].verbs == ["get"]
    subject = objects["binding"].subjects[0]
    assert (subject.kind, subject.name, subject.namespace) == ("ServiceAccount", "mlflow", NAMESPACE)

    # a second run finds nothing to do
    preview = pulumi(project, env, "preview", "--diff", "--expect-no-changes")
    assert "to create" not in preview.stdout and "to update" not in preview.stdout, preview.stdout
    assert "unchanged" in preview.stdout, preview.stdout
    again = pulumi(project, env, "up", "--yes", "--expect-no-changes")  # exit 255 on any change
    assert "unchanged" in again.stdout, again.stdout

    # a config change: one more reader changes the RoleBinding, in place, and nothing else
    pulumi(project, env, "config", "set", "--path", "bed:readers[1]", "Group:ml-auditors")
    changed = pulumi(project, env, "preview", "--json")
    steps = {
        s["urn"].rsplit("::", 1)[1]: s["op"] for s in json.loads(changed.stdout)["steps"] if s["op"] != "same"
    }
    assert steps == {"vault-readers": "update"}, steps
    pulumi(project, env, "up", "--yes", "--skip-preview")
    binding = rbac.read_namespaced_role_binding("hybridml-bed-readers", NAMESPACE)
    assert [(s.kind, s.name) for s in binding.subjects] == [
        ("ServiceAccount", "mlflow"),
        ("Group", "ml-auditors"),
    ]

    pulumi(project, env, "destroy", "--yes", "--skip-preview")
    for read, name in (
        (core.read_namespaced_secret, "hybridml-bed"),
        (core.read_namespaced_config_map, "alerts-dashboard"),
        (apps.read_namespaced_deployment, "mlflow"),
        (core.read_namespaced_service, "mlflow"),
        (net.read_namespaced_ingress, "mlflow"),
    ):
        with pytest.raises(client.ApiException) as gone:
            read(name, NAMESPACE)
        assert gone.value.status == 404, name
    for plural, version in (("prometheusrules", "v1"), ("alertmanagerconfigs", "v1alpha1")):
        listed = custom.list_cluster_custom_object("monitoring.coreos.com", version, plural)
        assert listed["items"] == [], plural
    assert not [
        d for d in apps.list_daemon_set_for_all_namespaces().items if d.metadata.name.startswith("engine-")
    ]
    node = core.read_node(NODE)
    assert "hybridml.io/gpu-pool" not in (node.metadata.labels or {})
    assert not any(t.key == "nvidia.com/gpu" and t.value == "true" for t in node.spec.taints or [])
    summary = json.loads(pulumi(project, env, "stack", "export").stdout)
    assert summary["deployment"].get("resources", []) == []
