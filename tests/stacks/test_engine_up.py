"""`pulumi up` for real: the Pulumi engine (tests/pulumibed.py) and the Kubernetes provider deploy
the on-prem components' Kubernetes parts onto the Kubernetes bed (tests/k8sbed.py).

A file state backend in the test's directory, a stack passphrase, nothing fetched. The program is
made of the project's own components (the on-prem GPU pool's node labels, taint and device
plugin DaemonSet; the on-prem key vault's Secret, Role and RoleBinding). Every object is then read
back through the Kubernetes API with the organisation's labels; a second ``up`` changes nothing;
a config change (one more reader) updates the RoleBinding alone; ``destroy`` removes what ``up``
made, and gives the node back without the pool's labels.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8sbed import K8sBed, Pool, k8s_bed  # noqa: F401 - the fixture
from tests.pulumibed import engine_env

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "hml-engine"
NODE = "engine-0"
ORG = {"team": "ml-platform", "cost-center": "cc-4711", "environment": "bed"}
SECRET_VALUE = "s3cr3t-from-pulumi-config"

PROGRAM = f'''
import pulumi
import pulumi_kubernetes as k8s

from components.base import OrgTags
from components.gpu_pool import GpuNodePool, GpuNodePoolArgs, OnpremPool
from components.keyvault import KeyVault, KeyVaultArgs

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
pulumi.export("secretRefs", vault.secret_refs)
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


@pytest.fixture
def engine_node(k8s_bed: K8sBed):  # noqa: F811
    """A GPU node of the bed's own for the pool to label and taint (the session's nodes stay as
    other tests expect them); removed afterwards."""
    k8s_bed.add_node(Pool("engine", 1, gpus=1), 0)
    yield NODE
    k8s_bed.delete_node(NODE)


def test_up_deploys_the_onprem_components_then_changes_nothing_then_destroys(
    k8s_bed: K8sBed,  # noqa: F811
    engine_node: str,
    tmp_path: Path,
):
    from kubernetes import client

    project = _project(tmp_path)
    env = engine_env(tmp_path / "state", tmp_path / "pulumi-home", KUBECONFIG=str(k8s_bed.kubeconfig))
    pulumi(project, env, "stack", "init", "bed")
    pulumi(project, env, "config", "set", "--secret", "bed:dbPassword", SECRET_VALUE)
    pulumi(project, env, "config", "set", "--path", "bed:readers[0]", f"ServiceAccount:{NAMESPACE}:mlflow")

    up = pulumi(project, env, "up", "--yes", "--skip-preview")
    assert SECRET_VALUE not in up.stdout + up.stderr
    state = "".join(f.read_text(errors="replace") for f in (tmp_path / "state").rglob("*") if f.is_file())
    assert "hml-engine-bed" in state and SECRET_VALUE not in state  # encrypted in the state file
    outputs = json.loads(pulumi(project, env, "stack", "output", "--json").stdout)
    assert outputs["nodes"] == [NODE]
    assert outputs["secretRefs"] == {"db-password": f"{NAMESPACE}/hybridml-bed#db-password"}

    api = k8s_bed.client()
    core, apps, rbac = client.CoreV1Api(api), client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
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
    }
    for what, obj in objects.items():
        labels = obj.metadata.labels or {}
        assert {k: labels.get(k) for k in ORG} == ORG, (what, labels)

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
    with pytest.raises(client.ApiException) as gone:
        core.read_namespaced_secret("hybridml-bed", NAMESPACE)
    assert gone.value.status == 404
    assert not [
        d for d in apps.list_daemon_set_for_all_namespaces().items if d.metadata.name.startswith("engine-")
    ]
    node = core.read_node(NODE)
    assert "hybridml.io/gpu-pool" not in (node.metadata.labels or {})
    assert not any(t.key == "nvidia.com/gpu" and t.value == "true" for t in node.spec.taints or [])
    summary = json.loads(pulumi(project, env, "stack", "export").stdout)
    assert summary["deployment"].get("resources", []) == []
