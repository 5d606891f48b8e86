"""Object storage rules: KMS encryption, versioning, public access, TLS-only, retention.

With pulumi-aws 7 a bucket's settings live in separate resources (``BucketVersioning``,
``BucketServerSideEncryptionConfiguration``, ...) that point at the bucket through their
``bucket`` input, so most checks here are stack rules that join those resources to their bucket.
The join follows the ``bucket`` property's dependency (what the engine records for an output
passed in), falling back to a literal bucket name; both hold during preview, when the bucket's id
is still unknown. The deprecated inline bucket arguments are honoured too; where both exist, the
separate resource wins, as it does in S3.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pulumi_policy import PolicyResource, Severity

from policies.props import (
    dig,
    is_map,
    items,
    number,
    policy_statements,
    provider_setting,
    strings,
    tags_of,
    unwrap,
)
from policies.registry import resource_rule, stack_rule

BUCKETS = frozenset({"aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"})
ENCRYPTION = frozenset(
    {
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
    }
)
VERSIONING = frozenset(
    {
        "aws:s3/bucketVersioning:BucketVersioning",
        "aws:s3/bucketVersioningV2:BucketVersioningV2",
    }
)
PUBLIC_ACCESS_BLOCK = frozenset({"aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"})
BUCKET_POLICY = frozenset({"aws:s3/bucketPolicy:BucketPolicy"})
LIFECYCLE = frozenset(
    {
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
        "aws:s3/bucketLifecycleConfigurationV2:BucketLifecycleConfigurationV2",
    }
)
KMS_ALGORITHMS = frozenset({"aws:kms", "aws:kms:dsse"})
PUBLIC_ACLS = frozenset({"public-read", "public-read-write", "authenticated-read"})
BLOCK_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def _by_bucket(resources: Sequence[PolicyResource], types: frozenset[str]) -> dict[str, list[PolicyResource]]:
    """The resources of ``types`` keyed by the URN of the bucket their ``bucket`` input names."""
    named = {
        dig(b.props, "bucket"): b.urn
        for b in resources
        if b.resource_type in BUCKETS and isinstance(dig(b.props, "bucket"), str)
    }
    attached: dict[str, list[PolicyResource]] = defaultdict(list)
    for resource in resources:
        if resource.resource_type not in types:
            continue
        targets = {
            d.urn for d in resource.property_dependencies.get("bucket", []) if d.resource_type in BUCKETS
        }
        literal = dig(resource.props, "bucket")
        if isinstance(literal, str) and literal in named:
            targets.add(named[literal])
        for urn in targets:
            attached[urn].append(resource)
    return attached


def _buckets(resources: Sequence[PolicyResource]) -> list[PolicyResource]:
    return [r for r in resources if r.resource_type in BUCKETS]


@stack_rule(
    "s3-bucket-kms-encryption",
    description="Every S3 bucket is encrypted at rest with a customer-managed KMS key.",
    severity=Severity.HIGH,
    remediation="Add a BucketServerSideEncryptionConfiguration for the bucket with "
    "sseAlgorithm 'aws:kms' and kmsMasterKeyId set to your KeyVault's key "
    "(ObjectStore does this).",
    config={
        "requireCustomerKey": {
            "type": "boolean",
            "default": True,
            "description": "Require kmsMasterKeyId, not the AWS-managed key.",
        }
    },
)
def bucket_kms_encryption(
    resources: Sequence[PolicyResource], config: Mapping[str, Any]
) -> Iterator[tuple[str | None, str]]:
    attached = _by_bucket(resources, ENCRYPTION)
    for bucket in _buckets(resources):
        # A separate configuration replaces the bucket's own (whose output, once applied,
        # shows the AWS default the configuration then overrides).
        defaults = [
            dig(rule, "applyServerSideEncryptionByDefault")
            for sse in attached.get(bucket.urn, [])
            for rule in items(dig(sse.props, "rules"))
        ] or [
            dig(
                bucket.props,
                "serverSideEncryptionConfiguration",
                "rule",
                "applyServerSideEncryptionByDefault",
            )
        ]
        defaults = [d for d in defaults if is_map(d)]
        if not defaults:
            yield bucket.urn, f"bucket '{bucket.name}' has no server-side encryption configuration"
            continue
        for default in defaults:
            algorithm = dig(default, "sseAlgorithm")
            if str(algorithm) not in KMS_ALGORITHMS:
                yield bucket.urn, f"bucket '{bucket.name}' uses sseAlgorithm {algorithm!r}, not aws:kms"
            elif config["requireCustomerKey"] and not dig(default, "kmsMasterKeyId"):
                yield (
                    bucket.urn,
                    (
                        f"bucket '{bucket.name}' uses the AWS-managed key; "
                        "set kmsMasterKeyId to a customer-managed key"
                    ),
                )


def _is_dataset_bucket(bucket: PolicyResource, markers: Sequence[str]) -> bool:
    """A dataset bucket: a marker appears in its resource name, bucket name or a tag value."""
    words = [bucket.name, str(dig(bucket.props, "bucket", default=""))]
    words += [str(unwrap(v)) for v in tags_of(bucket.props).values()]
    return any(m.lower() in w.lower() for m in markers for w in words)


@stack_rule(
    "s3-dataset-versioning",
    description="Dataset buckets keep object versions, so a model can be re-trained on the "
    "exact data it saw.",
    severity=Severity.HIGH,
    remediation="Add a BucketVersioning for the bucket with versioningConfiguration.status 'Enabled'.",
    config={
        "datasetMarkers": {
            "type": "array",
            "items": {"type": "string"},
            "default": ["dataset"],
            "description": "A bucket whose name or a tag value contains one of these is a dataset bucket.",
        }
    },
)
def dataset_versioning(
    resources: Sequence[PolicyResource], config: Mapping[str, Any]
) -> Iterator[tuple[str | None, str]]:
    attached = _by_bucket(resources, VERSIONING)
    for bucket in _buckets(resources):
        if not _is_dataset_bucket(bucket, config["datasetMarkers"]):
            continue
        enabled = dig(bucket.props, "versioning", "enabled") is True or any(
            dig(v.props, "versioningConfiguration", "status") == "Enabled"
            for v in attached.get(bucket.urn, [])
        )
        if not enabled:
            yield bucket.urn, f"dataset bucket '{bucket.name}' does not have versioning enabled"


def s3_endpoint(resource: PolicyResource) -> str | None:
    """The custom S3 endpoint of the resource's provider (None: AWS S3 itself)."""
    endpoints = provider_setting(resource, "endpoints")
    return next((str(dig(e, "s3")) for e in items(endpoints) if dig(e, "s3")), None)


def _public_statement(statement: Mapping[str, Any]) -> bool:
    principal = unwrap(dig(statement, "Principal"))
    everyone = principal == "*" or "*" in strings(dig(principal, "AWS"))
    return everyone and dig(statement, "Effect") == "Allow" and not dig(statement, "Condition")


@stack_rule(
    "s3-public-access-blocked",
    description="No S3 bucket is public: no public ACL or policy grant, and on AWS a public "
    "access block with all four settings on.",
    severity=Severity.CRITICAL,
    remediation="Add a BucketPublicAccessBlock for the bucket with blockPublicAcls, "
    "blockPublicPolicy, ignorePublicAcls and restrictPublicBuckets all true, and drop public "
    "ACLs and Allow statements for Principal '*'. S3-compatible endpoints without that API "
    "(MinIO) keep buckets private by having no public policy.",
)
def public_access_blocked(
    resources: Sequence[PolicyResource], config: Mapping[str, Any]
) -> Iterator[tuple[str | None, str]]:
    blocks = _by_bucket(resources, PUBLIC_ACCESS_BLOCK)
    policies = _by_bucket(resources, BUCKET_POLICY)
    for bucket in _buckets(resources):
        acl = dig(bucket.props, "acl")
        if str(acl) in PUBLIC_ACLS:
            yield bucket.urn, f"bucket '{bucket.name}' has the public ACL {acl!r}"
        documents = [dig(bucket.props, "policy")]
        documents += [dig(p.props, "policy") for p in policies.get(bucket.urn, [])]
        if any(_public_statement(s) for d in documents for s in policy_statements(d)):
            yield bucket.urn, f"bucket '{bucket.name}' has a policy allowing Principal '*'"
        if s3_endpoint(bucket) is not None:
            continue  # no PublicAccessBlock API on S3-compatible endpoints
        if not blocks.get(bucket.urn):
            yield bucket.urn, f"bucket '{bucket.name}' has no public access block"
        for block in blocks.get(bucket.urn, []):
            off = [flag for flag in BLOCK_FLAGS if dig(block.props, flag) is not True]
            if off:
                yield (
                    block.urn,
                    (
                        f"public access block '{block.name}' of bucket '{bucket.name}' "
                        f"does not set {', '.join(off)} to true"
                    ),
                )


def _denies_insecure_transport(statement: Mapping[str, Any]) -> bool:
    secure = dig(statement, "Condition", "Bool", "aws:SecureTransport")
    actions = strings(dig(statement, "Action"))
    return (
        dig(statement, "Effect") == "Deny"
        and str(secure).lower() == "false"
        and any(a in ("*", "s3:*") for a in actions)
    )


@stack_rule(
    "s3-tls-only",
    description="Every S3 bucket's policy denies requests not made over TLS.",
    severity=Severity.HIGH,
    remediation="Add a BucketPolicy statement: Effect Deny, Principal '*', Action 's3:*', "
    "Condition Bool aws:SecureTransport 'false', on the bucket and its objects.",
)
def tls_only(
    resources: Sequence[PolicyResource], config: Mapping[str, Any]
) -> Iterator[tuple[str | None, str]]:
    attached = _by_bucket(resources, BUCKET_POLICY)
    for bucket in _buckets(resources):
        documents = [dig(bucket.props, "policy")]
        documents += [dig(p.props, "policy") for p in attached.get(bucket.urn, [])]
        statements = [s for doc in documents for s in policy_statements(doc)]
        if not any(_denies_insecure_transport(s) for s in statements):
            yield (
                bucket.urn,
                (f"bucket '{bucket.name}' has no policy statement denying aws:SecureTransport=false"),
            )


@dataclass(frozen=True)
class LifecycleRule:
    """One lifecycle rule, the same shape whether declared inline or as its own resource."""

    enabled: bool
    transition_days: list[int]
    expiration_days: int | None
    noncurrent_days: int | None
    abort_days: int | None


def lifecycle_rules(resource_type: str, props: Mapping[str, Any]) -> list[LifecycleRule]:
    inline = resource_type in BUCKETS
    return [
        LifecycleRule(
            enabled=dig(r, "enabled") is True if inline else dig(r, "status") == "Enabled",
            transition_days=[
                d for t in items(dig(r, "transitions")) if (d := number(dig(t, "days"))) is not None
            ],
            expiration_days=number(dig(r, "expiration", "days")),
            noncurrent_days=number(
                dig(r, "noncurrentVersionExpiration", "days" if inline else "noncurrentDays")
            ),
            abort_days=number(
                dig(r, "abortIncompleteMultipartUploadDays")
                if inline
                else dig(r, "abortIncompleteMultipartUpload", "daysAfterInitiation")
            ),
        )
        for r in items(dig(props, "lifecycleRules" if inline else "rules"))
    ]


def _bucket_lifecycles(
    resources: Sequence[PolicyResource],
) -> Iterator[tuple[PolicyResource, list[LifecycleRule]]]:
    """Each bucket with its enabled lifecycle rules: from its attached configurations, which
    replace the bucket's inline rules in S3, or else the inline ones."""
    attached = _by_bucket(resources, LIFECYCLE)
    for bucket in _buckets(resources):
        configs = attached.get(bucket.urn) or [bucket]
        rules = [r for c in configs for r in lifecycle_rules(c.resource_type, c.props)]
        yield bucket, [r for r in rules if r.enabled]


@stack_rule(
    "s3-retention-plan",
    description="Every S3 bucket has a retention plan: enabled lifecycle rules that delete "
    "objects when the plan says so.",
    severity=Severity.MEDIUM,
    remediation="Render a RetentionPlan into a BucketLifecycleConfiguration for the bucket "
    "(ObjectStore does this) with an expiration.",
)
def retention_plan(
    resources: Sequence[PolicyResource], config: Mapping[str, Any]
) -> Iterator[tuple[str | None, str]]:
    for bucket, enabled in _bucket_lifecycles(resources):
        if not enabled:
            yield bucket.urn, f"bucket '{bucket.name}' has no enabled lifecycle rule"
        elif not any(r.expiration_days is not None for r in enabled):
            yield bucket.urn, f"bucket '{bucket.name}' never deletes objects"


@stack_rule(
    "s3-cold-tier",
    description="Every S3 bucket moves ageing objects to a cold storage tier, as the "
    "retention plan requires.",
    severity=Severity.MEDIUM,
    remediation="Give the RetentionPlan a cold storage class the endpoint supports: GLACIER or "
    "DEEP_ARCHIVE on AWS, the name of a configured remote tier on MinIO "
    "(platform:onprem.cold_storage_class).",
)
def cold_tier(
    resources: Sequence[PolicyResource], config: Mapping[str, Any]
) -> Iterator[tuple[str | None, str]]:
    for bucket, enabled in _bucket_lifecycles(resources):
        if not any(r.transition_days for r in enabled):
            where = s3_endpoint(bucket) or "AWS S3"
            yield bucket.urn, f"bucket '{bucket.name}' ({where}) never moves objects to cold storage"


@resource_rule(
    "s3-retention-limits",
    description="Lifecycle rules stay within the organisation's retention limits.",
    severity=Severity.MEDIUM,
    remediation="Use RetentionPlan values within the limits: cold tier at most maxColdAfterDays "
    "after creation, deletion between minRetentionDays and maxRetentionDays.",
    types=LIFECYCLE | BUCKETS,
    config={
        "maxColdAfterDays": {"type": "integer", "default": 365},
        "minRetentionDays": {
            "type": "integer",
            "default": 30,
            "description": "Legal minimum: no deletion before this age.",
        },
        "maxRetentionDays": {"type": "integer", "default": 1095},
    },
)
def retention_limits(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    for index, rule in enumerate(lifecycle_rules(resource_type, props)):
        if not rule.enabled:
            continue
        for days in rule.transition_days:
            if days > config["maxColdAfterDays"]:
                yield (
                    f"rule {index} moves objects to cold storage after {days} days, "
                    f"later than the limit of {config['maxColdAfterDays']}"
                )
        days = rule.expiration_days
        if days is not None and not config["minRetentionDays"] <= days <= config["maxRetentionDays"]:
            yield (
                f"rule {index} deletes objects after {days} days, outside "
                f"{config['minRetentionDays']}..{config['maxRetentionDays']}"
            )


@resource_rule(
    "s3-lifecycle-hygiene",
    description="Lifecycle configurations expire noncurrent versions and abort incomplete "
    "multipart uploads, so versioning and failed uploads do not grow storage forever.",
    severity=Severity.LOW,
    remediation="Add noncurrentVersionExpiration and abortIncompleteMultipartUpload to an "
    "enabled rule (RetentionPlan renders both).",
    types=LIFECYCLE,
)
def lifecycle_hygiene(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    enabled = [r for r in lifecycle_rules(resource_type, props) if r.enabled]
    if not any(r.noncurrent_days is not None for r in enabled):
        yield "no enabled rule expires noncurrent object versions"
    if not any(r.abort_days is not None for r in enabled):
        yield "no enabled rule aborts incomplete multipart uploads"
