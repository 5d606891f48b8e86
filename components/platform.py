"""The platform: the components composed for one stack (on-prem, AWS, or both).

Why here and not in ``stacks/platform/__main__.py``: the composition is the product, and a
thin entry point keeps it importable, testable under mocks and benchmarkable. One function
reads the typed config's sections and wires vault -> storage -> GPU pools -> tracking ->
monitoring, then exports the runner profile.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.gpu_pool import (
    AwsCapacity,
    AwsPool,
    GpuNodePool,
    GpuNodePoolArgs,
    OnpremPool,
    PoolSize,
)
from components.keyvault import KeyVault, KeyVaultArgs
from components.monitoring import NAMESPACE, Monitoring, MonitoringArgs
from components.object_store import AccessGrants, ObjectStore, ObjectStoreArgs, StorageEndpoint
from components.platform_config import PlatformConfig, PlatformSecrets
from components.profile import (
    aws_target,
    data_store,
    kubernetes_target,
    runner_profile,
    slurm_target,
    ssh_target,
    telemetry,
)
from components.tracking import TrackingServer, TrackingServerArgs, TrackingSettings

VAULT_SECRETS = ("tracking-db-uri", "tracking-admin-password")


class ExistingBucket:
    """A bucket the stack does not make (``storage.create_buckets: false``): its name as given,
    and the ARN S3 gives a bucket of that name."""

    def __init__(self, name: str) -> None:
        self.bucket: pulumi.Input[str] = name
        self.arn: pulumi.Input[str] = f"arn:aws:s3:::{name}"


class Platform:
    """Builds every component for a config; attributes expose them for exports and tests."""

    def __init__(self, config: PlatformConfig, secrets: PlatformSecrets) -> None:
        self.config = config
        self.tags = config.org
        self.prefix = f"hybridml/{pulumi.get_stack()}"
        self.k8s = {
            p: self._cluster(p) for p in config.platforms() if p == "onprem" or p == config.tracking.cluster
        }
        self.vaults = self._vaults(secrets)
        self.stores = self._stores(secrets)
        self.pools = self._pools()
        self.tracking = self._tracking(secrets)
        self.monitoring = [self._monitoring(p) for p in config.platforms()]

    def _cluster(self, platform: str) -> pulumi.ResourceOptions:
        """Provider options for the platform's Kubernetes cluster, and its namespace."""
        section = getattr(self.config, platform)
        provider = k8s.Provider(f"{platform}-k8s", context=section.kube_context)
        k8s.core.v1.Namespace(
            f"{platform}-namespace",
            metadata={"name": self.config.namespace, "labels": self.tags.as_tags()},
            opts=pulumi.ResourceOptions(provider=provider),
        )
        return pulumi.ResourceOptions(providers=[provider])

    def _vaults(self, secrets: PlatformSecrets) -> dict[str, KeyVault]:
        values = dict(
            zip(VAULT_SECRETS, (secrets.tracking_db_uri, secrets.tracking_admin_password), strict=True)
        )
        vaults: dict[str, KeyVault] = {}
        if self.config.aws:
            storage = self.config.storage
            principals = storage.data_scientist_principals + storage.labeller_principals
            vaults["aws"] = KeyVault(
                "vault",
                KeyVaultArgs(
                    platform="aws",
                    tags=self.tags,
                    prefix=self.prefix,
                    secrets=values,
                    reader_principals=self.config.vault.readers,
                    key_user_principals=[p for p in principals if p.startswith("arn:aws")],
                ),
            )
        if self.config.onprem:
            # With an AWS vault in the same stack, on-prem holds copies of the same secrets.
            synced = {k: vaults["aws"].value(k) for k in values} if "aws" in vaults else values
            vaults["onprem"] = KeyVault(
                "vault-onprem",
                KeyVaultArgs(
                    platform="onprem",
                    tags=self.tags,
                    prefix=self.prefix,
                    secrets=synced,
                    reader_principals=self.config.vault.onprem_readers,
                    namespace=self.config.namespace,
                ),
                opts=self.k8s["onprem"],
            )
        return vaults

    def _stores(self, secrets: PlatformSecrets) -> dict[str, ObjectStore | ExistingBucket]:
        storage, onprem = self.config.storage, self.config.onprem
        if not storage.create_buckets:
            return {name: ExistingBucket(name) for name in storage.buckets}
        endpoint_args: dict[str, Any] = {}
        if onprem and onprem.s3_endpoint:
            endpoint = StorageEndpoint.minio(onprem.s3_endpoint, onprem.cold_storage_class)
            endpoint_args = {
                "endpoint": endpoint,
                "kms_key_id": onprem.s3_kms_key,
                "region": onprem.site,
                "provider": endpoint.provider("onprem-s3", secrets.s3_access_key, secrets.s3_secret_key),
            }
        grants = storage.model_dump(include=set(AccessGrants.model_fields))
        stores: dict[str, ObjectStore | ExistingBucket] = {}
        for name, bucket in storage.buckets.items():
            platform_args = (
                endpoint_args
                if bucket.platform == "onprem"
                else {"kms_key_id": self.vaults["aws"].key_arn, "region": self.config.aws.region}
            )
            stores[name] = ObjectStore(
                name,
                ObjectStoreArgs(
                    platform=bucket.platform,
                    tags=self.tags,
                    retention=bucket.retention or storage.retention,
                    **grants,
                    **platform_args,
                ),
            )
        return stores

    def _pools(self) -> dict[str, GpuNodePool]:
        pools = {}
        artifacts = self.stores[self.config.storage.artifact_bucket]
        if self.config.aws:
            aws_cfg = self.config.aws
            for name, pool in aws_cfg.pools.items():
                pools[name] = GpuNodePool(
                    name,
                    GpuNodePoolArgs(
                        platform="aws",
                        tags=self.tags,
                        **pool.model_dump(include=set(PoolSize.model_fields)),
                        aws=AwsPool(
                            cluster_name=aws_cfg.cluster_name,
                            vpc_id=aws_cfg.vpc_id,
                            subnet_ids=aws_cfg.subnet_ids,
                            artifact_bucket_arn=artifacts.arn,
                            **pool.model_dump(include=set(AwsCapacity.model_fields)),
                        ),
                    ),
                )
        if self.config.onprem:
            onprem = self.config.onprem
            for name, pool in onprem.pools.items():
                pools[name] = GpuNodePool(
                    name,
                    GpuNodePoolArgs(
                        platform="onprem",
                        tags=self.tags,
                        onprem=OnpremPool(
                            **pool.model_dump(),
                            known_hosts=onprem.known_hosts,
                            remote_root=onprem.remote_root,
                        ),
                    ),
                    opts=self.k8s["onprem"],
                )
        return pools

    def _tracking(self, secrets: PlatformSecrets) -> TrackingServer:
        cfg = self.config.tracking
        vault = self.vaults[cfg.cluster]
        artifacts_cfg = self.config.storage.buckets[self.config.storage.artifact_bucket]
        access: dict[str, Any] = {}
        if artifacts_cfg.platform == "onprem":
            access = {
                "s3_endpoint_url": self.config.onprem.s3_endpoint,
                "s3_access_key": secrets.s3_access_key,
                "s3_secret_key": secrets.s3_secret_key,
            }
        return TrackingServer(
            "mlflow",
            TrackingServerArgs(
                platform=artifacts_cfg.platform,
                tags=self.tags,
                db_uri=vault.value("tracking-db-uri"),
                admin_password=vault.value("tracking-admin-password"),
                artifact_bucket=self.stores[self.config.storage.artifact_bucket].bucket,
                namespace=self.config.namespace,
                **cfg.model_dump(include=set(TrackingSettings.model_fields)),
                **access,
            ),
            opts=self.k8s[cfg.cluster],
        )

    def _monitoring(self, platform: str) -> Monitoring:
        return Monitoring(
            f"monitoring-{platform}",
            MonitoringArgs(
                platform=platform,
                tags=self.tags,
                budget=self.config.budget,
                gpu_pools=list(getattr(self.config, platform).pools),
                **({"textfile": self.config.onprem.telemetry_textfile} if platform == "onprem" else {}),
            ),
            opts=self.k8s.get(platform) if platform == "onprem" else None,
        )

    def profile(self) -> pulumi.Output[dict[str, Any]]:
        """The ``runnerProfile`` stack output."""
        targets: dict[str, dict[str, Any]] = {}
        on_aws: set[str] = set()  # the targets whose machines are AWS's (EC2 runners, EKS nodes)
        artifacts = self.stores[self.config.storage.artifact_bucket].bucket
        if self.config.aws:
            aws = self.config.aws
            for name in aws.pools:
                targets[name] = aws_target(
                    self.pools[name],
                    region=aws.region,
                    artifact_bucket=artifacts,
                    secrets_prefix=self.prefix,
                )
                # the same pool's EKS managed node group, scheduled by the cluster (issue 24)
                targets[f"{name}-eks"] = kubernetes_target(
                    self.pools[name],
                    context=aws.kube_context,
                    namespace=self.config.namespace,
                    image=aws.training_image,
                    gpu_hour_usd=self.config.budget.gpu_hour_usd,
                )
                on_aws |= {name, f"{name}-eks"}
        if self.config.onprem:
            onprem = self.config.onprem
            for name, pool in onprem.pools.items():
                if pool.hosts:
                    targets[name] = ssh_target(
                        self.pools[name],
                        known_hosts=onprem.known_hosts,
                        remote_root=onprem.remote_root,
                        gpu_hour_usd=self.config.budget.gpu_hour_usd,
                    )
            for name, pool in onprem.pools.items():
                if pool.nodes:
                    targets[f"{name}-k8s"] = kubernetes_target(
                        self.pools[name],
                        context=onprem.kube_context,
                        namespace=self.config.namespace,
                        image=onprem.training_image,
                        gpu_hour_usd=self.config.budget.gpu_hour_usd,
                    )
            for name, cluster in onprem.slurm.items():
                targets[name] = slurm_target(
                    cluster, known_hosts=onprem.known_hosts, gpu_hour_usd=self.config.budget.gpu_hour_usd
                )
        vault = (
            {"kind": "aws", "prefix": self.prefix, "region": self.config.aws.region}
            if self.config.aws
            else None
        )
        stores = self._data_stores()
        for name, target in targets.items():  # each target sits next to its own platform's buckets
            platform = "aws" if name in on_aws else "onprem"
            if platform in stores:
                target["near"] = [platform]
            target["telemetry"] = self._telemetry(platform)
        return runner_profile(
            tracking_uri=self.tracking.url,
            targets=targets,
            default_target=self.config.default_target,
            vault=vault,
            stores=stores,
            budgets=self._budgets(),
        )

    def _budgets(self) -> dict[str, dict[str, Any]]:
        """The stack's budget as the runner's team budget: every submit of the team is checked
        against it (runners/runs/budget.py), alerting at the same shares as the provisioned alarms."""
        budget = self.config.budget
        alert_at = [p / 100 for p in budget.thresholds_percent]
        return {self.tags.team: {"monthly_usd": budget.monthly_usd, "alert_at": alert_at}}

    def _telemetry(self, platform: str) -> dict[str, Any]:
        """Run ends go to the monitors of the target's own platform, under the org's team."""
        if platform == "aws":
            cloudwatch = {"region": self.config.aws.region, "namespace": NAMESPACE}
            return telemetry(team=self.tags.team, cloudwatch=cloudwatch)
        return telemetry(team=self.tags.team, textfile=self.config.onprem.telemetry_textfile)

    def _data_stores(self) -> dict[str, dict[str, Any]]:
        """The dataset buckets (all but the artifact bucket) as one store per platform."""
        storage, onprem = self.config.storage, self.config.onprem
        stores = {}
        for platform in ("aws", "onprem"):
            buckets = [
                self.stores[name].bucket
                for name, bucket in storage.buckets.items()
                if bucket.platform == platform and name != storage.artifact_bucket
            ]
            if not buckets:
                continue
            if platform == "aws" and self.config.aws:
                stores["aws"] = data_store(buckets, region=self.config.aws.region, endpoint_url=None)
            elif platform == "onprem" and onprem:
                stores["onprem"] = data_store(buckets, region=None, endpoint_url=onprem.s3_endpoint)
        return stores
