"""The runner profile: everything ``hml`` needs to reach each environment and the one tracker.

Why a stack output: whoever stands the platform up already knows the launch template,
subnets, hosts and tracking URL; exporting them as ``runnerProfile`` means
``pulumi stack output --json runnerProfile > hybridml.yaml`` is the whole hand-over to a
data scientist (JSON is YAML). The shape is the runner's (``runners/profile.py``): this
module only fills it, it holds no secret, and every value is a plain string, number, list
or map once resolved.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.gpu_pool import GPU_TAINT, GpuNodePool
from hmlkit.profile import SlurmTarget


def aws_target(
    pool: GpuNodePool, *, region: str, artifact_bucket: pulumi.Input[str], secrets_prefix: str
) -> dict[str, Any]:
    """A target of kind ``aws``: launch runner VMs from the pool's launch template."""
    return {
        "kind": "aws",
        "region": region,
        "launch_template": pool.launch_template_id,
        "subnets": pool.subnets,
        "instance_types": pool.instance_types,
        "artifact_bucket": artifact_bucket,
        "secrets_prefix": secrets_prefix,
    }


def ssh_target(
    pool: GpuNodePool, *, known_hosts: str, remote_root: str, gpu_hour_usd: float
) -> dict[str, Any]:
    """A target of kind ``ssh``: the pool's registered (probed) GPU hosts."""
    return {
        "kind": "ssh",
        "hosts": pool.hosts,
        "known_hosts": known_hosts,
        "remote_root": remote_root,
        "gpu_hour_usd": gpu_hour_usd,
    }


POOL_LABEL = "hybridml.io/gpu-pool"


def kubernetes_target(
    pool: GpuNodePool, *, context: str | None, namespace: str, image: str, gpu_hour_usd: float
) -> dict[str, Any]:
    """A target of kind ``kubernetes``: the pool's labelled and tainted cluster nodes, scheduled
    by the cluster itself (the device plugin counts ``nvidia.com/gpu``)."""
    target: dict[str, Any] = {
        "kind": "kubernetes",
        "namespace": namespace,
        "image": image,
        "gpu_resource": "nvidia.com/gpu",
        "node_selector": {POOL_LABEL: pool.pool_labels[POOL_LABEL]},
        "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
        "gpu_hour_usd": gpu_hour_usd,
    }
    if context:
        target["context"] = context
    return target


def slurm_target(cluster: SlurmTarget, *, known_hosts: str, gpu_hour_usd: float) -> dict[str, Any]:
    """A target of kind ``slurm``: the cluster as configured, the site's defaults where unset."""
    given = cluster.model_dump(mode="json", exclude_unset=True)
    return {"kind": "slurm", "known_hosts": known_hosts, "gpu_hour_usd": gpu_hour_usd, **given}


def data_store(
    buckets: list[pulumi.Input[str]], *, region: str | None, endpoint_url: str | None
) -> dict[str, Any]:
    """A store of datasets (``hml data``, a job's ``inputs``): the platform's buckets on one S3 API."""
    optional = {"region": region, "endpoint_url": endpoint_url}
    return {"buckets": buckets, **{k: v for k, v in optional.items() if v}}


def telemetry(
    *, team: str, cloudwatch: dict[str, str] | None = None, textfile: str | None = None
) -> dict[str, Any]:
    """A target's ``telemetry``: where its runner publishes each run's end (runners/runs/telemetry.py)
    for the monitors components/monitoring.py provisions, CloudWatch on AWS, a node_exporter
    textfile on-prem, under the budget's team."""
    optional = {"cloudwatch": cloudwatch, "prometheus_textfile": textfile}
    return {"team": team, **{k: v for k, v in optional.items() if v}}


def runner_profile(
    *,
    tracking_uri: pulumi.Input[str],
    targets: dict[str, dict[str, Any]],
    default_target: str | None = None,
    vault: dict[str, str] | None = None,
    stores: dict[str, dict[str, Any]] | None = None,
    budgets: dict[str, dict[str, Any]] | None = None,
) -> pulumi.Output[dict[str, Any]]:
    """The profile, with every nested Output resolved; ``local`` is always a target."""
    profile: dict[str, Any] = {
        "tracking_uri": tracking_uri,
        "targets": {"local": {"kind": "local"}, **targets},
    }
    if stores:
        profile["stores"] = stores
    if default_target:
        profile["default_target"] = default_target
    if budgets:
        profile["budgets"] = budgets
    if vault:
        profile["vault"] = vault
    return pulumi.Output.from_input(profile)
