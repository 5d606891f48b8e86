"""The platform stack's typed configuration: read once, validated whole, errors with the fix.

Why: a platform engineer's typo must fail before any resource is planned, with the key as
they typed it and the command that fixes it (``platform:budget.monthly_usd: must be > 0;
set it with: pulumi config set --path 'platform:budget.monthly_usd' <value>``), not as a
provider error twenty resources later. Secret keys are only ever read with
``require_secret`` so they stay Pulumi secrets from config to resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import Field, model_validator

from components.base import Args, ArgsError, OrgTags, Platform
from components.gpu_pool import AwsPoolSpec, OnpremMachines
from components.monitoring import TEXTFILE, Budget
from components.object_store import AccessGrants
from components.retention import RetentionPlan
from components.tracking import TrackingSettings
from hmlkit.profile import SlurmTarget

NAMESPACE = "platform"
SECRET_KEYS = {
    "trackingDbUri": "the MLflow Postgres URI, postgresql://user:password@host:5432/db",
    "trackingAdminPassword": "the MLflow admin password",
    "s3AccessKey": "the on-prem S3 endpoint's access key (only with on-prem buckets)",
    "s3SecretKey": "the on-prem S3 endpoint's secret key (only with on-prem buckets)",
}


class StackConfigError(pulumi.RunError):
    """Invalid stack configuration; each line names the key and how to set it."""


class BucketConfig(Args):
    platform: Platform
    retention: RetentionPlan | None = None
    """Overrides ``storage.retention`` for this bucket."""


class StorageConfig(AccessGrants):
    buckets: dict[str, BucketConfig] = Field(min_length=1)
    artifact_bucket: str = "artifacts"
    """The bucket MLflow and the runners keep checkpoints and artifacts in."""
    retention: RetentionPlan = Field(default_factory=RetentionPlan)
    create_buckets: bool = True
    """``false``: the buckets already exist under these names (made by the storage team, or
    ``mc mb`` on the on-prem endpoint); the stack makes none of them and so needs no AWS provider
    for them: the profile and MLflow get the names as they are. The on-prem stack run on the
    Kubernetes test bed (the AWS provider cannot be built there) is the case it was added for."""

    @model_validator(mode="after")
    def _artifacts_exist(self) -> StorageConfig:
        if self.artifact_bucket not in self.buckets:
            raise ValueError(
                f"artifact_bucket {self.artifact_bucket!r} is not one of the "
                f"buckets ({', '.join(self.buckets)}); add it to buckets"
            )
        return self


class VaultConfig(Args):
    readers: list[str] = Field(default_factory=list)
    """AWS: IAM role ARNs that may read the secrets (e.g. the runners', MLflow's)."""
    onprem_readers: list[str] = Field(default_factory=lambda: ["ServiceAccount:hybridml:mlflow"])
    """On-prem: Kubernetes subjects that may read the secrets."""


class TrackingConfig(TrackingSettings):
    cluster: Platform
    """Which cluster runs the one MLflow server."""


class AwsConfig(Args):
    region: str
    cluster_name: str
    vpc_id: str
    subnet_ids: list[str] = Field(min_length=1)
    kube_context: str | None = None
    """The runner's kubeconfig context for the EKS cluster (unset: the kubeconfig's current one)."""
    pools: dict[str, AwsPoolSpec] = Field(min_length=1)
    """Target name -> pool; each becomes a runner target of kind ``aws`` (EC2 runners from its
    launch template) and one of kind ``kubernetes`` named ``<pool>-eks`` (its EKS node group)."""
    training_image: str = Field("nvcr.io/nvidia/pytorch:25.01-py3", min_length=1)
    """The image of the ``<pool>-eks`` targets' pods: bash, python3 and the jobs' libraries."""


class SlurmCluster(SlurmTarget):
    """A Slurm cluster the on-prem teams already run: the stack builds nothing on it, it hands
    the runner its coordinates, checked by the runner's own model so both sides agree.

    Unset ``known_hosts`` and ``gpu_hour_usd`` come from ``onprem.known_hosts`` and
    ``budget.gpu_hour_usd``.
    """

    remote_root: str = Field(min_length=1)
    """Required here: the directory the login node shares with every compute node
    (e.g. ``/shared/hybridml`` on the cluster's NFS or Lustre)."""


class OnpremConfig(Args):
    site: str = "onprem"
    """Site name; selects the legal minimum retention for on-prem buckets."""
    kube_context: str | None = None
    s3_endpoint: str | None = None
    s3_kms_key: str = "hybridml"
    cold_storage_class: str = ""
    known_hosts: str = "~/.hybridml/known_hosts"
    remote_root: str = "/var/lib/hybridml"
    pools: dict[str, OnpremMachines] = Field(default_factory=dict)
    """Target name -> pool; pools with SSH hosts become runner targets of kind ``ssh``, pools with
    Kubernetes nodes targets of kind ``kubernetes`` named ``<pool>-k8s``."""
    training_image: str = Field("nvcr.io/nvidia/pytorch:25.01-py3", min_length=1)
    """The image of the ``kubernetes`` targets' pods: bash, python3 and the jobs' libraries."""
    slurm: dict[str, SlurmCluster] = Field(default_factory=dict)
    """Target name -> Slurm cluster; each becomes a runner target of kind ``slurm``."""
    telemetry_textfile: str = Field(TEXTFILE, pattern=r"^/\S+\.prom$")
    """The node_exporter textfile (in its ``--collector.textfile.directory``) that the on-prem
    targets' runners write their run-end counters to, for the monitoring's Prometheus rules."""


class PlatformConfig(Args):
    """Everything under the ``platform:`` namespace, plus ``aws:region``."""

    org: OrgTags
    storage: StorageConfig
    tracking: TrackingConfig
    budget: Budget
    vault: VaultConfig = Field(default_factory=VaultConfig)
    namespace: str = "hybridml"
    """Kubernetes namespace of the platform's workloads on every cluster."""
    aws: AwsConfig | None = None
    onprem: OnpremConfig | None = None
    default_target: str | None = None

    @model_validator(mode="after")
    def _sections_present(self) -> PlatformConfig:
        used = {b.platform for b in self.storage.buckets.values()} | {self.tracking.cluster}
        for platform in sorted(used):
            if getattr(self, platform) is None:
                raise ValueError(
                    f"{platform}: required, because a bucket or the tracking server is on {platform!r}"
                )
        if self.onprem and "onprem" in used - {self.tracking.cluster} and not self.onprem.s3_endpoint:
            raise ValueError(
                "onprem.s3_endpoint: required for on-prem buckets, e.g. https://minio.example.internal:9000"
            )
        for name, bucket in self.storage.buckets.items():
            section = getattr(self, bucket.platform)
            region = section.region if bucket.platform == "aws" else section.site
            try:
                (bucket.retention or self.storage.retention).check_region(region)
            except ValueError as exc:
                raise ValueError(f"storage.buckets.{name}: {exc}") from None
        artifacts = self.storage.buckets[self.storage.artifact_bucket].platform
        if artifacts != self.tracking.cluster:
            raise ValueError(
                f"tracking.cluster is {self.tracking.cluster!r} but the artifact "
                f"bucket {self.storage.artifact_bucket!r} is on {artifacts!r}; "
                "keep MLflow next to its artifacts"
            )
        if self.aws and not self.vault.readers:
            raise ValueError(
                "vault.readers: required with platform:aws: the IAM role ARNs "
                "that may read the platform's secrets"
            )
        if self.aws and self.onprem and set(self.aws.pools) & set(self.onprem.pools):
            raise ValueError(
                "aws.pools and onprem.pools share target names "
                f"{sorted(set(self.aws.pools) & set(self.onprem.pools))}"
            )
        pools = {"local", *(self.aws.pools if self.aws else []), *(self.onprem.pools if self.onprem else [])}
        if self.onprem and set(self.onprem.slurm) & pools:
            raise ValueError(
                "onprem.slurm: cluster names are target names and must differ from local and the "
                f"pools' names; rename {sorted(set(self.onprem.slurm) & pools)}"
            )
        if self.default_target and self.default_target not in self.target_names():
            raise ValueError(
                f"default_target: {self.default_target!r} is not one of {', '.join(self.target_names())}"
            )
        return self

    def target_names(self) -> list[str]:
        names = ["local"]
        names += list(self.aws.pools) if self.aws else []
        names += [n for n, p in self.onprem.pools.items() if p.hosts] if self.onprem else []
        names += list(self.onprem.slurm) if self.onprem else []
        return names

    def platforms(self) -> list[str]:
        return [p for p in ("aws", "onprem") if getattr(self, p) is not None]


@dataclass(frozen=True)
class PlatformSecrets:
    """Secret config values, as Pulumi secrets (never plain strings)."""

    tracking_db_uri: pulumi.Output[str]
    tracking_admin_password: pulumi.Output[str]
    s3_access_key: pulumi.Output[str] | None
    s3_secret_key: pulumi.Output[str] | None


def _fix(key: str) -> str:
    return f"set it with: pulumi config set --path '{key}' <value>"


def _config_problem(path: str, msg: str) -> str:
    """One error line: the key as the engineer writes it, and the command that sets it."""
    if path == "aws.region":
        return "aws:region: required with platform:aws; set it with: pulumi config set aws:region eu-west-1"
    if not path:
        return f"{NAMESPACE}: {msg}"
    return f"{NAMESPACE}:{path}: {msg}; {_fix(f'{NAMESPACE}:{path}')}"


def load_config() -> tuple[PlatformConfig, PlatformSecrets]:
    """Read and validate the stack's configuration, or raise :class:`StackConfigError`."""
    cfg = pulumi.Config(NAMESPACE)
    known = set(PlatformConfig.model_fields) | set(SECRET_KEYS)
    raw: dict[str, Any] = {}
    problems = [
        f"{NAMESPACE}:{key}: unknown key; known keys: {', '.join(sorted(known))}"
        for key in _set_keys()
        if key not in known
    ]
    for field, info in PlatformConfig.model_fields.items():
        try:  # strings are stored as they are, everything else as JSON
            value = cfg.get(field) if info.annotation in (str, str | None) else cfg.get_object(field)
        except pulumi.ConfigTypeError:
            problems.append(f"{NAMESPACE}:{field}: must be a map; {_fix(f'{NAMESPACE}:{field}.<key>')}")
            continue
        if value is not None:
            raw[field] = value
    if isinstance(raw.get("aws"), dict):
        raw["aws"] = {"region": pulumi.Config("aws").get("region"), **raw["aws"]}
    config = None
    try:
        config = PlatformConfig(**raw)
    except ArgsError as exc:
        problems += [_config_problem(path, msg) for path, msg in exc.problems]
    if problems or config is None:
        raise StackConfigError("invalid stack configuration:\n  " + "\n  ".join(problems))
    onprem_buckets = any(b.platform == "onprem" for b in config.storage.buckets.values())
    needed = ["trackingDbUri", "trackingAdminPassword"]
    needed += ["s3AccessKey", "s3SecretKey"] if onprem_buckets else []
    missing = [k for k in needed if runtime_config.get_config(f"{NAMESPACE}:{k}") is None]
    if missing:
        raise StackConfigError(
            "missing secrets:\n  "
            + "\n  ".join(
                f"{NAMESPACE}:{k}: {SECRET_KEYS[k]}; set it with: pulumi config set --secret "
                f"{NAMESPACE}:{k} <value>"
                for k in missing
            )
        )
    secrets = {k: cfg.require_secret(k) for k in needed}
    return config, PlatformSecrets(
        tracking_db_uri=secrets["trackingDbUri"],
        tracking_admin_password=secrets["trackingAdminPassword"],
        s3_access_key=secrets.get("s3AccessKey"),
        s3_secret_key=secrets.get("s3SecretKey"),
    )


def _set_keys() -> list[str]:
    """Keys set under ``platform:`` (the runtime's config map, as the CLI delivered it)."""
    prefix = f"{NAMESPACE}:"
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    return [k[len(prefix) :] for k in merged if k.startswith(prefix)]
