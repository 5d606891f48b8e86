"""ObjectStore: one versioned, encrypted, private bucket with retention and per-role access.

Why one component for both platforms: AWS S3 and an on-prem S3-compatible endpoint
(MinIO-style) speak the same API, so the on-prem form is the same pulumi-aws resources
through a provider aimed at that endpoint. What the endpoint cannot do is *data*
(:class:`StorageEndpoint`), never a second copy of the component: e.g. MinIO has no
PublicAccessBlock API (its buckets are private unless a policy opens them) and grants users
through its own admin API rather than bucket-policy principals, so the per-role policies are
exported as identity policies to load there.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws
from pydantic import Field, field_validator, model_validator

from components.base import Args, OrgTags, Platform, PlatformComponent
from components.retention import RetentionPlan

READ_WRITE = [
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]


class StorageEndpoint(Args):
    """What an S3 API endpoint supports; AWS supports everything."""

    url: str | None = None
    """``https://minio.example.internal:9000``; ``None`` means AWS S3 itself."""
    cold_storage_class: str = "GLACIER"
    """Storage class of the cold tier; ``""`` when the endpoint has none configured."""
    kms: bool = True
    public_access_block: bool = True
    principal_policies: bool = True
    """Whether bucket policies may name principals (MinIO: no; Ceph RGW: yes)."""

    @classmethod
    def minio(cls, url: str, cold_storage_class: str = "") -> StorageEndpoint:
        return cls(
            url=url,
            cold_storage_class=cold_storage_class,
            kms=True,
            public_access_block=False,
            principal_policies=False,
        )

    def provider(
        self,
        name: str,
        access_key: pulumi.Input[str],
        secret_key: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> aws.Provider:
        """A pulumi-aws provider aimed at this endpoint (path-style, no AWS account checks)."""
        return aws.Provider(
            name,
            region="us-east-1",
            endpoints=[aws.ProviderEndpointArgs(s3=self.url)],
            s3_use_path_style=True,
            access_key=pulumi.Output.secret(access_key),
            secret_key=pulumi.Output.secret(secret_key),
            skip_credentials_validation=True,
            skip_metadata_api_check=True,
            skip_region_validation=True,
            skip_requesting_account_id=True,
            opts=opts,
        )


class AccessGrants(Args):
    """Who may use the data (shared with the stack config's ``storage``)."""

    data_scientist_principals: list[str] = Field(min_length=1)
    """Read/write everything: IAM role ARNs (AWS), policy or user names (MinIO)."""
    labeller_principals: list[str] = Field(default_factory=list)
    """Read/write ``labeller_prefix`` only: the outside labelling team."""
    labeller_prefix: str = "labelling/"

    @field_validator("labeller_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or not value.endswith("/") or "*" in value:
            raise ValueError(
                f"{value!r} must look like 'labelling/': no leading '/', a trailing '/', no wildcards"
            )
        return value


class ObjectStoreArgs(AccessGrants):
    platform: Platform
    tags: OrgTags
    region: str
    """AWS region, or the on-prem site name; selects the legal minimum retention."""
    kms_key_id: str | pulumi.Output
    """KMS key ARN on AWS (the KeyVault's key); the endpoint's KMS key name on-prem."""
    retention: RetentionPlan = Field(default_factory=RetentionPlan)
    endpoint: StorageEndpoint = Field(default_factory=StorageEndpoint)
    provider: aws.Provider | None = None
    """Required on-prem: the provider from :meth:`StorageEndpoint.provider`."""
    force_destroy: bool = False

    @model_validator(mode="after")
    def _platform_fits(self) -> ObjectStoreArgs:
        if self.platform == "onprem" and (self.provider is None or self.endpoint.url is None):
            raise ValueError(
                "platform 'onprem' needs endpoint=StorageEndpoint.minio(url) and "
                "provider=endpoint.provider(...)"
            )
        if self.platform == "aws" and self.endpoint.url is not None:
            raise ValueError(
                "platform 'aws' uses S3 itself: leave endpoint.url unset, or "
                "use platform 'onprem' for an S3-compatible endpoint"
            )
        self.retention.check_region(self.region)
        return self


def access_statements(bucket_arn: str, args: ObjectStoreArgs) -> dict[str, list[dict]]:
    """Per-role grants: data scientists read/write all, labellers one prefix only."""
    objects = f"{bucket_arn}/*"
    prefix = args.labeller_prefix
    return {
        "data-scientists": [
            {
                "Sid": "DataScientistsList",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketLocation"],
                "Resource": bucket_arn,
            },
            {"Sid": "DataScientistsReadWrite", "Effect": "Allow", "Action": READ_WRITE, "Resource": objects},
        ],
        "labellers": [
            {
                "Sid": "LabellersListPrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket_arn,
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
            },
            {
                "Sid": "LabellersReadWritePrefix",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": f"{bucket_arn}/{prefix}*",
            },
        ],
    }


def bucket_policy(bucket_arn: str, args: ObjectStoreArgs) -> str:
    """TLS-only for everyone; principal grants where the endpoint understands them."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]
    if args.endpoint.principal_policies:
        principals = {
            "data-scientists": args.data_scientist_principals,
            "labellers": args.labeller_principals,
        }
        for role, grants in access_statements(bucket_arn, args).items():
            if principals[role]:
                statements += [{**g, "Principal": {"AWS": principals[role]}} for g in grants]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def identity_policies(bucket_arn: str, args: ObjectStoreArgs) -> dict[str, str]:
    """The same grants as identity policies (for MinIO's ``mc admin policy create``)."""
    return {
        role: json.dumps({"Version": "2012-10-17", "Statement": grants})
        for role, grants in access_statements(bucket_arn, args).items()
    }


class ObjectStore(PlatformComponent):
    """A bucket for datasets or artifacts. Outputs: ``bucket``, ``arn``, ``access_policies``."""

    def __init__(self, name: str, args: ObjectStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("hybridml:storage:ObjectStore", name, opts)
        child = self.child_opts(provider=args.provider) if args.provider else self.child_opts()
        bucket = aws.s3.Bucket(
            self.child_name("bucket"), force_destroy=args.force_destroy, tags=args.tags.as_tags(), opts=child
        )
        # The policy and lifecycle rules apply once versioning and the access block are on.
        locked_down: list[pulumi.Resource] = [
            aws.s3.BucketVersioning(
                self.child_name("versioning"),
                bucket=bucket.id,
                versioning_configuration={"status": "Enabled"},
                opts=child,
            )
        ]
        encryption = (
            {"sse_algorithm": "aws:kms", "kms_master_key_id": args.kms_key_id}
            if args.endpoint.kms
            else {"sse_algorithm": "AES256"}
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            self.child_name("encryption"),
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": encryption,
                    "bucket_key_enabled": args.endpoint.kms,
                }
            ],
            opts=child,
        )
        if args.endpoint.public_access_block:
            locked_down.append(
                aws.s3.BucketPublicAccessBlock(
                    self.child_name("public-access"),
                    bucket=bucket.id,
                    block_public_acls=True,
                    block_public_policy=True,
                    ignore_public_acls=True,
                    restrict_public_buckets=True,
                    opts=child,
                )
            )
        after_child = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=locked_down))
        aws.s3.BucketPolicy(
            self.child_name("policy"),
            bucket=bucket.id,
            policy=bucket.arn.apply(lambda arn: bucket_policy(arn, args)),
            opts=after_child,
        )
        aws.s3.BucketLifecycleConfiguration(
            self.child_name("lifecycle"),
            bucket=bucket.id,
            rules=args.retention.pulumi_rules(args.endpoint.cold_storage_class),
            opts=after_child,
        )
        self.bucket = bucket.bucket
        self.arn = bucket.arn
        self.access_policies = bucket.arn.apply(lambda arn: identity_policies(arn, args))
        self.register_outputs(
            {"bucket": self.bucket, "arn": self.arn, "access_policies": self.access_policies}
        )
