"""The platform stack: every example evaluates, leaks nothing, and hands the runner a profile."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from components.monitoring import TEXTFILE
from hmlkit.errors import ProfileError
from hmlkit.profile import parse_profile
from policies.offline import load_stack_config, run_project
from runners.profile import load_profile
from tests.programs import missing_tags, plaintext_occurrences
from tests.stacks.examples import PROJECT, SECRETS, STACKS


def _org(stack: str) -> dict[str, str]:
    org = load_stack_config(PROJECT, stack).values["platform:org"]
    return {"team": org["team"], "cost-center": org["cost_center"], "environment": org["environment"]}


@pytest.mark.parametrize("stack", STACKS)
def test_example_stack_evaluates_with_all_components(evaluated, stack):
    result = evaluated[stack]
    kinds = {r.type for r in result.resources}
    assert {
        "hybridml:storage:ObjectStore",
        "hybridml:security:KeyVault",
        "hybridml:compute:GpuNodePool",
        "hybridml:observability:Monitoring",
        "hybridml:tracking:TrackingServer",
    } <= kinds
    assert len(result.by_type("hybridml:tracking:TrackingServer")) == 1


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_value_in_plain_inputs_or_outputs(evaluated, stack):
    result = evaluated[stack]
    for value in SECRETS.values():
        assert plaintext_occurrences(result, value) == [], value


@pytest.mark.parametrize("stack", STACKS)
def test_org_tags_on_everything_taggable(evaluated, stack):
    assert missing_tags(evaluated[stack], _org(stack)) == []


K8S_PROVIDER, AWS_PROVIDER = "pulumi:providers:kubernetes", "pulumi:providers:aws"
NAMESPACE = "kubernetes:core/v1:Namespace"
ONPREM_SHARED = {("onprem-k8s", K8S_PROVIDER), ("onprem-namespace", NAMESPACE), ("onprem-s3", AWS_PROVIDER)}
#: What several components share (a cluster, its namespace, the S3 endpoint) and so no one
#: component owns: the only resources directly under the stack.
TOP_LEVEL = {
    "onprem": ONPREM_SHARED,
    "hybrid": ONPREM_SHARED,
    "aws-dev": {("aws-k8s", K8S_PROVIDER), ("aws-namespace", NAMESPACE)},
}


@pytest.mark.parametrize("stack", STACKS)
def test_every_child_is_parented_to_a_component(evaluated, stack):
    result = evaluated[stack]
    ours = {r.urn for r in result.resources if r.type.startswith("hybridml:")}
    top = [r for r in result.resources if r.custom and r.parent not in ours]
    assert {(r.name, r.type) for r in top} == TOP_LEVEL[stack]
    assert {r.parent for r in top} == {result.stack_urn}


@pytest.mark.parametrize("stack", STACKS)
def test_runner_profile_is_the_runners_schema_and_yaml(evaluated, stack):
    profile = evaluated[stack].outputs["runnerProfile"]
    parsed = parse_profile(profile, f"{stack} runnerProfile")  # the runner's own contract
    assert sorted(parsed.targets) == sorted(profile["targets"])  # every target validated, none dropped
    broken = {**profile, "targets": {**profile["targets"], "local": {"kind": "local", "gpus": 1}}}
    with pytest.raises(ProfileError, match="targets.local.gpus: unknown field"):
        parse_profile(broken, "edited")
    assert yaml.safe_load(json.dumps(profile)) == profile  # `--json > hybridml.yaml` works
    assert profile["targets"]["local"] == {"kind": "local"}
    assert profile["tracking_uri"].startswith("https://")
    config = load_stack_config(PROJECT, stack).values["platform:budget"]  # the team's budget, exported
    shares = [p / 100 for p in config.get("thresholds_percent", [50, 80, 100])]
    assert profile["budgets"] == {
        _org(stack)["team"]: {"monthly_usd": config["monthly_usd"], "alert_at": shares}
    }


def test_aws_target_points_at_the_stacks_own_resources(evaluated):
    result = evaluated["aws-dev"]
    target = result.outputs["runnerProfile"]["targets"]["aws"]
    (template,) = result.by_type("aws:ec2/launchTemplate:LaunchTemplate")
    artifacts = result.named("artifacts-bucket")
    assert target == {
        "kind": "aws",
        "region": "eu-west-1",
        "launch_template": template.id,
        "subnets": ["subnet-0aa11bb22cc33dd44", "subnet-0ee55ff66aa77bb88"],
        "instance_types": ["g5.xlarge", "g5.2xlarge"],
        "artifact_bucket": artifacts.outputs["bucket"],
        "secrets_prefix": "hybridml/aws-dev",
        "near": ["aws"],
        "telemetry": {"team": "ml-platform", "cloudwatch": {"region": "eu-west-1", "namespace": "HybridML"}},
    }
    datasets = [b.outputs["bucket"] for b in result.by_type("aws:s3/bucket:Bucket") if b != artifacts]
    assert datasets and result.outputs["runnerProfile"]["stores"] == {
        "aws": {"buckets": datasets, "region": "eu-west-1"}
    }
    assert result.outputs["runnerProfile"]["vault"] == {
        "kind": "aws",
        "prefix": "hybridml/aws-dev",
        "region": "eu-west-1",
    }
    secrets = [s.inputs["name"] for s in result.by_type("aws:secretsmanager/secret:Secret")]
    assert all(name.startswith("hybridml/aws-dev/") for name in secrets) and secrets


def test_onprem_target_lists_the_registered_hosts(evaluated):
    profile = evaluated["onprem"].outputs["runnerProfile"]
    target = profile["targets"]["onprem"]
    assert target["kind"] == "ssh" and profile["default_target"] == "onprem"
    assert target["hosts"][0] == {
        "address": "10.0.0.5",
        "port": 22,
        "user": "hml",
        "identity_file": "~/.ssh/id_ed25519",
        "gpus": 4,
        "labels": {"rack": "a"},
        "python": "python3",
    }
    assert (target["known_hosts"], target["remote_root"], target["gpu_hour_usd"]) == (
        "~/.hybridml/known_hosts",
        "/var/lib/hybridml",
        0.9,
    )
    assert "vault" not in profile


def test_hybrid_has_both_targets_one_tracker_and_copies_secrets_on_prem(evaluated):
    result = evaluated["hybrid"]
    profile = result.outputs["runnerProfile"]
    # -k8s, -eks: each cluster's GPU node pool as a kubernetes target (issue 24)
    assert set(profile["targets"]) == {"local", "onprem", "onprem-k8s", "aws", "aws-eks"}
    # data close to compute: each target sits next to its own platform's dataset buckets
    assert profile["stores"]["onprem"]["endpoint_url"] == "https://minio.lab.example.com:9000"
    assert len(profile["stores"]["onprem"]["buckets"]) == len(profile["stores"]["aws"]["buckets"]) == 1
    near = ("local", "onprem", "onprem-k8s", "aws", "aws-eks")
    assert [profile["targets"][t].get("near") for t in near] == [
        None,
        ["onprem"],
        ["onprem"],
        ["aws"],
        ["aws"],
    ]
    assert profile["targets"]["aws-eks"]["telemetry"] == profile["targets"]["aws"]["telemetry"]
    assert profile["tracking_uri"] == "https://mlflow.example.com"
    (k8s_secret,) = [
        s for s in result.by_type("kubernetes:core/v1:Secret") if s.name == "vault-onprem-secret"
    ]
    assert set(k8s_secret.inputs["stringData"]) == {"tracking-db-uri", "tracking-admin-password"}
    buckets = {r.name: r for r in result.by_type("aws:s3/bucket:Bucket")}
    assert buckets["burst-datasets-bucket"].options.provider is None  # AWS S3 itself
    assert buckets["datasets-bucket"].options.provider.startswith(result.named("onprem-s3").urn)


def test_the_eks_node_group_is_exported_as_a_kubernetes_target_with_its_label_and_taint(evaluated):
    """The node group the aws pool provisions carries the pool's label and the GPU taint; the
    exported target selects that label and tolerates that taint, so its pods land there only."""
    result = evaluated["aws-dev"]
    target = result.outputs["runnerProfile"]["targets"]["aws-eks"]
    (group,) = result.by_type("aws:eks/nodeGroup:NodeGroup")
    assert target["kind"] == "kubernetes" and target["gpu_resource"] == "nvidia.com/gpu"
    for key, value in target["node_selector"].items():
        assert group.inputs["labels"][key] == value
    (taint,) = group.inputs["taints"]
    (toleration,) = target["tolerations"]
    assert (toleration["key"], toleration["effect"]) == (taint["key"], "NoSchedule")
    assert taint["effect"] == "NO_SCHEDULE" and toleration["operator"] == "Exists"


def test_retention_from_config_reaches_every_bucket(evaluated):
    for stack in STACKS:
        rules = evaluated[stack].by_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
        assert rules
        for lifecycle in rules:
            current = lifecycle.inputs["rules"][0]
            assert current["expiration"] == {"days": 1095}, stack


def test_budget_thresholds_from_config(evaluated):
    (budget,) = evaluated["aws-dev"].by_type("aws:budgets/budget:Budget")
    assert budget.inputs["limitAmount"] == "2000.00"
    assert sorted({n["threshold"] for n in budget.inputs["notifications"]}) == [50, 80, 100]
    subs = evaluated["aws-dev"].by_type("aws:sns/topicSubscription:TopicSubscription")
    assert [s.inputs["endpoint"] for s in subs] == ["ml-leads@example.com"]


@pytest.mark.parametrize("stack", STACKS)
def test_every_component_is_ours_and_registers_real_outputs(evaluated, stack):
    result = evaluated[stack]
    components = [r for r in result.resources if not r.custom and r.type != "pulumi:pulumi:Stack"]
    assert components
    for component in components:
        assert component.type.startswith("hybridml:") and component.type.count(":") == 2
        assert component.outputs, component.urn
        assert all(v is not None for v in component.outputs.values()), component.urn


def test_onprem_profile_loads_in_hml(evaluated, tmp_path):
    path = tmp_path / "hybridml.yaml"
    path.write_text(json.dumps(evaluated["onprem"].outputs["runnerProfile"]))
    profile = load_profile(str(path))  # validates every target with its backend's config
    assert sorted(profile.targets) == ["hpc", "local", "onprem", "onprem-k8s"]  # -k8s: issue 24
    assert profile.pick(None) == "onprem"
    assert profile.target("hpc").kind == "slurm"


@pytest.mark.parametrize("stack", STACKS)
def test_every_target_exports_telemetry_for_its_platforms_monitors(evaluated, stack, tmp_path):
    """AWS targets publish to the CloudWatch namespace the monitoring's alarm reads, on-prem ones
    to the textfile the on-prem monitoring names; both under the org's team, and the runner's own
    loader takes them as its telemetry config."""
    result = evaluated[stack]
    team = load_stack_config(PROJECT, stack).values["platform:org"]["team"]
    (alarm,) = [
        a for a in result.by_type("aws:cloudwatch/metricAlarm:MetricAlarm") if "failed" in a.name
    ] or [None]
    textfiles = {m.outputs.get("textfile") for m in result.by_type("hybridml:observability:Monitoring")} - {
        None
    }
    path = tmp_path / "hybridml.yaml"
    path.write_text(json.dumps(result.outputs["runnerProfile"]))
    profile = load_profile(str(path))
    remote = [name for name in profile.targets if name != "local"]
    assert remote
    for name in remote:
        telemetry = profile.target(name).telemetry
        assert telemetry.team == team
        if profile.targets[name]["kind"] == "aws" or name.endswith("-eks"):  # EC2 runners, EKS pods
            assert telemetry.cloudwatch is not None and telemetry.prometheus_textfile is None
            assert telemetry.cloudwatch.region == load_stack_config(PROJECT, stack).values["aws:region"]
            assert alarm is not None and telemetry.cloudwatch.namespace == alarm.inputs["namespace"]
        else:
            assert telemetry.cloudwatch is None
            assert textfiles == {telemetry.prometheus_textfile}
    assert profile.target("local").telemetry.cloudwatch is None  # this machine: nothing provisioned


def test_onprem_telemetry_textfile_follows_the_config(evaluated):
    changed = {**load_stack_config(PROJECT, "onprem").values["platform:onprem"]}
    changed["telemetry_textfile"] = "/srv/prom/textfile/hml.prom"
    result = run_project(PROJECT, "onprem", config={"platform:onprem": changed}, secrets=SECRETS)
    targets = result.outputs["runnerProfile"]["targets"]
    assert {targets[t]["telemetry"]["prometheus_textfile"] for t in ("onprem", "hpc")} == {
        changed["telemetry_textfile"]
    }
    (monitoring,) = result.by_type("hybridml:observability:Monitoring")
    assert monitoring.outputs["textfile"] == changed["telemetry_textfile"]


def test_slurm_cluster_is_exported_as_configured_with_the_sites_defaults(evaluated):
    target = evaluated["onprem"].outputs["runnerProfile"]["targets"]["hpc"]
    assert target == {
        "kind": "slurm",
        "login": {"address": "login.hpc.example.com", "user": "hml", "identity_file": "~/.ssh/id_ed25519"},
        "remote_root": "/shared/hybridml",
        "partition": "gpu,gpu-long",
        "account": "ml-platform",
        "qos": "normal",
        "gres_name": "gpu",
        "gpu_hour_usd": 0.6,
        "known_hosts": "~/.hybridml/known_hosts",  # onprem.known_hosts
        "near": ["onprem"],  # the on-prem dataset buckets
        "telemetry": {"team": "ml-platform", "prometheus_textfile": TEXTFILE},
    }
    result = run_project(
        PROJECT, "onprem", config={"platform:onprem": _onprem_with_slurm({})}, secrets=SECRETS
    )
    plain = result.outputs["runnerProfile"]["targets"]["hpc"]
    assert plain["gpu_hour_usd"] == 0.9  # budget.gpu_hour_usd when the cluster sets none


def _onprem_with_slurm(changes: dict) -> dict:
    """The on-prem example's ``platform:onprem`` with ``changes`` made to its ``hpc`` cluster."""
    onprem = load_stack_config(PROJECT, "onprem").values["platform:onprem"]
    hpc = {k: v for k, v in onprem["slurm"]["hpc"].items() if k != "gpu_hour_usd"}
    return {**onprem, "slurm": {"hpc": {**hpc, **changes}}}


def test_exported_slurm_target_runs_a_job_on_the_slurm_bed(
    evaluated, tmp_path, ssh_bed, slurm_bed, mlflow_server
):
    """The stack's slurm target, pointed at the bed's login node and shared directory, runs a job
    to FINISHED with the stack's account and qos."""
    from tests.runners.helpers import hml, submit_json, write_job
    from tests.slurmbed import PARTITION

    exported = evaluated["onprem"].outputs["runnerProfile"]
    known = tmp_path / "known_hosts"
    known.write_text(ssh_bed.known_hosts_text())
    bed = slurm_bed.target(ssh_bed.hosts[0], known, partition=PARTITION)
    # the login node, shared directory and partition are the bed's; the rest is the stack's
    target = {**exported["targets"]["hpc"], **bed}
    assert (target["account"], target["qos"]) == ("ml-platform", "normal")
    profile = {
        **exported,
        "tracking_uri": mlflow_server.url,
        "targets": {**exported["targets"], "hpc": target},
    }
    path = tmp_path / "hybridml.yaml"
    path.write_text(json.dumps(profile))
    job = write_job(tmp_path / "w", run="echo from-the-stack-profile")
    summary, out = submit_json(str(job), "--target", "hpc", env={"HML_CONFIG": str(path)})
    assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr
    assert "from-the-stack-profile" in hml("logs", summary["run_id"]).stdout


@pytest.mark.parametrize("stack", ["aws-dev", "hybrid"])
def test_exported_profile_runs_a_job_on_its_aws_target_in_moto(
    evaluated, stack, tmp_path, aws_bed, mlflow_server
):
    """The stack's exported aws target, pointed at the stand-in's network, runs a job as is."""
    from tests.awsbed import wait_gone
    from tests.runners.helpers import submit_json, write_job

    exported = evaluated[stack].outputs["runnerProfile"]
    kinds = {name: raw["kind"] for name, raw in exported["targets"].items()}
    assert "aws" in kinds.values() and ("ssh" in kinds.values()) == (stack == "hybrid")
    name = next(n for n, kind in kinds.items() if kind == "aws")
    bed = aws_bed.target()
    # the ids the mocks invented do not exist in moto; the rest of the target is the stack's
    target = {**exported["targets"][name], **{k: bed[k] for k in ("launch_template", "subnets", "region")}}
    target.update({k: bed[k] for k in ("ssh_user", "identity_file", "remote_root")})
    profile = {
        **exported,
        "tracking_uri": mlflow_server.url,
        "targets": {**exported["targets"], name: target},
    }
    path = tmp_path / "hybridml.yaml"
    path.write_text(json.dumps(profile))
    assert load_profile(str(path)).target(name).kind == "aws"
    job = write_job(tmp_path / "w", run="echo from-the-stack-profile")
    summary, out = submit_json(str(job), "--target", name, env={"HML_CONFIG": str(path)})
    assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr
    assert wait_gone(aws_bed) == []


def test_exported_kubernetes_target_runs_a_job_on_the_k8s_bed(evaluated, tmp_path, k8s_bed, mlflow_server):
    """The stack's on-prem GPU node pool as a kubernetes target: its selector and toleration are
    the pool's label and taint. Pointed at the bed (kubeconfig, context, the host as image), with
    the bed's GPU nodes carrying the pool's label and the stack's namespace made, it runs a job."""
    from kubernetes import client

    from tests.runners.helpers import hml, submit_json, write_job

    exported = evaluated["onprem"].outputs["runnerProfile"]
    target = exported["targets"]["onprem-k8s"]
    assert target == {
        "kind": "kubernetes",
        "context": "lab-admin",
        "namespace": "hybridml",
        "image": "nvcr.io/nvidia/pytorch:25.01-py3",
        "gpu_resource": "nvidia.com/gpu",
        "node_selector": {"hybridml.io/gpu-pool": "onprem"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "gpu_hour_usd": 0.9,
        "near": ["onprem"],
        "telemetry": target["telemetry"],
    }
    core = k8s_bed.core()
    for node in ("gpu-0", "gpu-1"):
        core.patch_node(node, {"metadata": {"labels": {"hybridml.io/gpu-pool": "onprem"}}})
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="hybridml")))
    except client.ApiException as exc:
        assert exc.status == 409  # made by an earlier run of this test in the same bed
    bed = k8s_bed.target()
    target = {**target, **{k: bed[k] for k in ("kubeconfig", "context")}}
    profile = {
        **exported,
        "tracking_uri": mlflow_server.url,
        "targets": {**exported["targets"], "onprem-k8s": target},
    }
    path = tmp_path / "hybridml.yaml"
    path.write_text(json.dumps(profile))
    # the exported profile carries the team budget: a run needs a bound on what it may cost
    job = write_job(
        tmp_path / "w", run="echo from-the-stack-profile", resources={"gpus": 1}, max_runtime="10m"
    )
    summary, out = submit_json(str(job), "--target", "onprem-k8s", env={"HML_CONFIG": str(path)})
    assert out.returncode == 0 and summary["status"] == "FINISHED", out.stderr
    assert "from-the-stack-profile" in hml("logs", summary["run_id"]).stdout
    deadline = time.monotonic() + 30  # teardown's foreground deletion finishes in the background
    while k8s_bed.pods(f"hml.dev/run={summary['run_id']}") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert k8s_bed.pods(f"hml.dev/run={summary['run_id']}") == []
