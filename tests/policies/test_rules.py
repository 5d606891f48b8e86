"""Every rule against passing and failing inputs, through the pack's own policy wrappers.

Resource rules get hand-built inputs in the engine's shape (camelCase keys, JSON policy text,
secrets as ``pulumi_policy.Secret`` offline); stack rules get ``PolicyResource`` graphs whose
``property_dependencies`` join a bucket's settings to the bucket, as the engine records them.
``test_every_rule_has_a_passing_and_a_failing_case`` keeps the table honest as rules are added.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from pulumi_policy import Secret
from pulumi_policy.proxy import UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE

from policies.registry import all_rules
from tests.policies.conftest import check_resource, check_stack, res

BUCKET = "aws:s3/bucket:Bucket"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
POLICY = "aws:s3/bucketPolicy:BucketPolicy"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
TAGS = {"team": "ml", "cost-center": "cc-1", "environment": "dev"}
MINIO = {"endpoints": json.dumps([{"s3": "https://minio.lab:9000"}])}


class Case(NamedTuple):
    rule: str
    resource_type: str
    props: dict[str, Any]
    fails: bool
    config: dict[str, Any] | None = None


def gpu_group(**extra: Any) -> dict[str, Any]:
    props = {
        "amiType": "AL2_x86_64_GPU",
        "instanceTypes": ["g5.xlarge"],
        "capacityType": "SPOT",
        "scalingConfig": {"minSize": 0, "maxSize": 4, "desiredSize": 0},
        "tags": TAGS,
        "taints": [{"key": "nvidia.com/gpu", "effect": "NO_SCHEDULE"}],
    }
    return {**props, **extra}


def deployment(container: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img", **container}]}}}}


def iam(action: Any, resource: Any = "*", effect: str = "Allow") -> str:
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": effect, "Action": action, "Resource": resource}]}
    )


def lifecycle(transition: int | None = 365, expiration: int | None = 1095, **extra: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": "r", "status": "Enabled", "filter": {"prefix": ""}, **extra}
    if transition is not None:
        rule["transitions"] = [{"days": transition, "storageClass": "GLACIER"}]
    if expiration is not None:
        rule["expiration"] = {"days": expiration}
    return {"rules": [rule]}


HYGIENE = {
    "noncurrentVersionExpiration": {"noncurrentDays": 30},
    "abortIncompleteMultipartUpload": {"daysAfterInitiation": 7},
}
SG = "aws:ec2/securityGroup:SecurityGroup"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
SG_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"


def ingress(port: int, cidr: str = "0.0.0.0/0") -> dict[str, Any]:
    return {"ingress": [{"protocol": "tcp", "fromPort": port, "toPort": port, "cidrBlocks": [cidr]}]}


RESOURCE_CASES = [
    Case("s3-retention-limits", LIFECYCLE, lifecycle(), False),
    Case("s3-retention-limits", LIFECYCLE, lifecycle(expiration=4000), True),
    Case("s3-retention-limits", LIFECYCLE, lifecycle(transition=500), True),
    Case("s3-retention-limits", LIFECYCLE, lifecycle(expiration=10), True),
    Case("s3-retention-limits", LIFECYCLE, lifecycle(expiration=10), False, {"minRetentionDays": 1}),
    Case(
        "s3-retention-limits",
        BUCKET,
        {"lifecycleRules": [{"enabled": True, "expiration": {"days": 5000}}]},
        True,
    ),
    Case("s3-lifecycle-hygiene", LIFECYCLE, lifecycle(**HYGIENE), False),
    Case("s3-lifecycle-hygiene", LIFECYCLE, lifecycle(), True),
    Case("no-plaintext-secrets", BUCKET, {"tags": {"key": "AKIAIOSFODNN7EXAMPLE"}}, True),
    Case(
        "no-plaintext-secrets",
        LAUNCH_TEMPLATE,
        {"userData": "-----BEGIN RSA PRIVATE KEY-----\nMIIE..."},
        True,
    ),
    Case(
        "no-plaintext-secrets",
        "kubernetes:core/v1:ConfigMap",
        {"data": {"DB_URI": "postgresql://mlflow:hunter2@db:5432/mlflow"}},
        True,
    ),
    Case(
        "no-plaintext-secrets",
        "kubernetes:core/v1:ConfigMap",
        {"data": {"DB_PASSWORD": "hunter2hunter2"}},
        True,
    ),
    Case(
        "no-plaintext-secrets",
        "kubernetes:core/v1:ConfigMap",
        {
            "data": {
                "DB_PASSWORD": Secret("hunter2hunter2"),
                "secretName": "db-credentials",
                "DB_URI": "postgresql://mlflow:$(DB_PASSWORD)@db/mlflow",
            }
        },
        False,
    ),
    Case(
        "no-plaintext-secrets",
        "kubernetes:core/v1:Secret",
        {"stringData": {"password": "hunter2hunter2"}},
        False,
    ),
    Case(
        "no-plaintext-secrets",
        "aws:ssm/parameter:Parameter",
        {"type": "SecureString", "value": "postgresql://mlflow:hunter2@db/mlflow"},
        False,
    ),
    Case(
        "no-plaintext-secrets",
        "aws:ssm/parameter:Parameter",
        {"type": "String", "value": "postgresql://mlflow:hunter2@db/mlflow"},
        True,
    ),
    Case(
        "no-plaintext-secrets",
        "kubernetes:core/v1:ConfigMap",
        {"data": {"API_TOKEN": UNKNOWN_STRING_VALUE}},
        False,
    ),
    Case(
        "no-plaintext-secrets",
        "pulumi-python:dynamic:Resource",
        {"__provider": "gASV AKIAIOSFODNN7EXAMPLE", "host": "10.0.0.5"},
        False,
    ),
    Case(
        "workload-env-secret-refs",
        DEPLOYMENT,
        deployment({"env": [{"name": "DB_PASSWORD", "value": "hunter2"}]}),
        True,
    ),
    Case(
        "workload-env-secret-refs",
        DEPLOYMENT,
        deployment(
            {
                "env": [
                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
                    {"name": "MLFLOW_PORT", "value": "5000"},
                ]
            }
        ),
        False,
    ),
    Case(
        "workload-env-secret-refs",
        "aws:ecs/taskDefinition:TaskDefinition",
        {
            "containerDefinitions": json.dumps(
                [{"name": "c", "environment": [{"name": "API_KEY", "value": "abc123"}]}]
            )
        },
        True,
    ),
    Case(
        "workload-env-secret-refs",
        "aws:ecs/taskDefinition:TaskDefinition",
        {
            "containerDefinitions": json.dumps(
                [{"name": "c", "environment": [{"name": "LOG_LEVEL", "value": "info"}]}]
            )
        },
        False,
    ),
    Case(
        "workload-env-secret-refs",
        "aws:lambda/function:Function",
        {"environment": {"variables": {"SLACK_TOKEN": "xoxb-1"}}},
        True,
    ),
    Case("kms-key-rotation", "aws:kms/key:Key", {"enableKeyRotation": True}, False),
    Case("kms-key-rotation", "aws:kms/key:Key", {}, True),
    Case(
        "kms-key-rotation", "aws:kms/key:Key", {"enableKeyRotation": True, "rotationPeriodInDays": 730}, True
    ),
    Case("kms-key-rotation", "aws:kms/key:Key", {"customerMasterKeySpec": "RSA_2048"}, False),
    Case("secrets-manager-cmk", "aws:secretsmanager/secret:Secret", {"kmsKeyId": "k"}, False),
    Case("secrets-manager-cmk", "aws:secretsmanager/secret:Secret", {}, True),
    Case("iam-no-wildcard-admin", "aws:iam/policy:Policy", {"policy": iam("*")}, True),
    Case("iam-no-wildcard-admin", "aws:iam/policy:Policy", {"policy": iam(["s3:GetObject"])}, False),
    Case("iam-no-wildcard-admin", "aws:iam/policy:Policy", {"policy": iam("*", effect="Deny")}, False),
    Case(
        "iam-no-wildcard-admin",
        "aws:iam/policy:Policy",
        {"policy": json.dumps({"Statement": [{"Action": "*:*", "Resource": "*"}]})},
        True,
    ),  # Effect defaults to Allow
    Case(
        "iam-no-wildcard-admin",
        "aws:iam/role:Role",
        {"inlinePolicies": [{"name": "all", "policy": iam(["*"], ["*"])}]},
        True,
    ),
    Case(
        "iam-no-wildcard-admin",
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
        {"policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"},
        True,
    ),
    Case(
        "k8s-rbac-no-wildcard",
        "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole",
        {"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
        True,
    ),
    Case(
        "k8s-rbac-no-wildcard",
        "kubernetes:rbac.authorization.k8s.io/v1:Role",
        {"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
        False,
    ),
    Case(
        "k8s-no-cluster-admin-binding",
        "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding",
        {"roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}},
        True,
    ),
    Case(
        "k8s-no-cluster-admin-binding",
        "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding",
        {"roleRef": {"kind": "Role", "name": "secret-reader"}},
        False,
    ),
    Case("gpu-nodepool-max-size", NODE_GROUP, gpu_group(), False),
    Case("gpu-nodepool-max-size", NODE_GROUP, gpu_group(scalingConfig={"minSize": 0, "maxSize": 100}), True),
    Case("gpu-nodepool-max-size", NODE_GROUP, gpu_group(scalingConfig={"minSize": 0}), True),
    Case("gpu-nodepool-max-size", NODE_GROUP, gpu_group(scalingConfig={"maxSize": "32"}), True),
    Case(
        "gpu-nodepool-max-size",
        NODE_GROUP,
        {"instanceTypes": ["m5.large"], "scalingConfig": {"maxSize": 100}},
        False,
    ),
    Case("gpu-spot-outside-production", NODE_GROUP, gpu_group(), False),
    Case("gpu-spot-outside-production", NODE_GROUP, gpu_group(capacityType="ON_DEMAND"), True),
    Case(
        "gpu-spot-outside-production",
        NODE_GROUP,
        gpu_group(capacityType="ON_DEMAND", tags={**TAGS, "environment": "production"}),
        False,
    ),
    Case("gpu-spot-outside-production", LAUNCH_TEMPLATE, {"instanceType": "g5.xlarge"}, True),
    Case(
        "gpu-spot-outside-production",
        LAUNCH_TEMPLATE,
        {"instanceType": "g5.xlarge", "instanceMarketOptions": {"marketType": "spot"}},
        False,
    ),
    Case(
        "gpu-spot-outside-production",
        "aws:ec2/spotInstanceRequest:SpotInstanceRequest",
        {"instanceType": "g5.xlarge"},
        False,
    ),
    Case("gpu-ondemand-in-production", NODE_GROUP, gpu_group(tags={**TAGS, "environment": "prod"}), True),
    Case(
        "gpu-ondemand-in-production",
        NODE_GROUP,
        gpu_group(capacityType="ON_DEMAND", tags={**TAGS, "environment": "prod"}),
        False,
    ),
    Case("gpu-instance-types-allowed", NODE_GROUP, gpu_group(), False),
    Case("gpu-instance-types-allowed", NODE_GROUP, gpu_group(instanceTypes=["p5.48xlarge"]), True),
    Case(
        "gpu-instance-types-allowed",
        "aws:ec2/instance:Instance",
        {"instanceType": "p4d.24xlarge"},
        False,
        {"allowedFamilies": ["p4d"]},
    ),
    Case("gpu-instance-types-allowed", "aws:ec2/instance:Instance", {"instanceType": "g5g.xlarge"}, True),
    Case("gpu-instance-types-allowed", LAUNCH_TEMPLATE, {"instanceType": "m5.large"}, False),
    Case(
        "gpu-instance-types-allowed",
        NODE_GROUP,
        {"amiType": "AL2023_x86_64_STANDARD", "instanceTypes": ["m5.large"]},
        False,
    ),
    Case("gpu-nodes-tainted", NODE_GROUP, gpu_group(), False),
    Case("gpu-nodes-tainted", NODE_GROUP, gpu_group(taints=[]), True),
    Case(
        "gpu-nodes-tainted",
        NODE_GROUP,
        gpu_group(taints=[{"key": "nvidia.com/gpu", "effect": "PREFER_NO_SCHEDULE"}]),
        True,
    ),
    Case(
        "gpu-nodes-tainted",
        "kubernetes:core/v1:NodePatch",
        {"metadata": {"labels": {"nvidia.com/gpu.present": "true"}}},
        True,
    ),
    Case(
        "gpu-nodes-tainted",
        "kubernetes:core/v1:NodePatch",
        {
            "metadata": {"labels": {"nvidia.com/gpu.present": "true"}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
        },
        False,
    ),
    Case("sg-no-public-ssh", SG, ingress(22), True),
    Case("sg-no-public-ssh", SG, ingress(22, "10.8.0.0/16"), False),
    Case(
        "sg-no-public-ssh",
        SG_RULE,
        {"type": "ingress", "protocol": "-1", "fromPort": 0, "toPort": 0, "ipv6CidrBlocks": ["::/0"]},
        True,
    ),
    Case(
        "sg-no-public-ssh",
        SG_INGRESS,
        {"ipProtocol": "tcp", "fromPort": 20, "toPort": 30, "cidrIpv4": "0.0.0.0/0"},
        True,
    ),
    Case(
        "sg-no-public-ssh",
        SG_INGRESS,
        {"ipProtocol": "tcp", "fromPort": 443, "toPort": 443, "cidrIpv4": "0.0.0.0/0"},
        False,
    ),
    Case(
        "sg-no-public-ssh",
        SG_INGRESS,
        {"ipProtocol": "-1", "fromPort": 443, "toPort": 443, "cidrIpv6": "::/0"},
        True,
    ),  # all protocols: all ports
    Case(
        "sg-no-public-ssh",
        SG_RULE,
        {"type": "egress", "protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]},
        False,
    ),
    Case(
        "sg-no-public-ssh",
        SG_RULE,
        {"type": "ingress", "protocol": "tcp", "fromPort": 22, "cidrBlocks": ["0.0.0.0/0"]},
        True,
    ),
    Case(
        "sg-no-public-ssh",
        SG,
        {"ingress": [{"protocol": "tcp", "fromPort": 20, "toPort": 30, "cidrBlocks": ["0.0.0.0/0"]}]},
        True,
    ),
    Case(
        "sg-no-public-ssh",
        SG,
        {"ingress": [{"protocol": "all", "fromPort": 443, "toPort": 443, "ipv6CidrBlocks": ["::/0"]}]},
        True,
    ),
    Case("sg-public-ingress-restricted", SG, ingress(80), True),
    Case("sg-public-ingress-restricted", SG, ingress(443), False),
    Case("ec2-imdsv2-required", LAUNCH_TEMPLATE, {"metadataOptions": {"httpTokens": "required"}}, False),
    Case("ec2-imdsv2-required", LAUNCH_TEMPLATE, {"metadataOptions": {"httpTokens": "optional"}}, True),
    Case(
        "budget-alert-thresholds",
        "aws:budgets/budget:Budget",
        {
            "notifications": [
                {"notificationType": "ACTUAL", "subscriberEmailAddresses": ["a@example.com"]},
                {"notificationType": "FORECASTED", "subscriberSnsTopicArns": ["arn:aws:sns:t"]},
            ]
        },
        False,
    ),
    Case(
        "budget-alert-thresholds",
        "aws:budgets/budget:Budget",
        {"notifications": [{"notificationType": "ACTUAL", "subscriberEmailAddresses": ["a@example.com"]}]},
        True,
    ),
    Case(
        "budget-alert-thresholds",
        "aws:budgets/budget:Budget",
        {
            "notifications": [
                {"notificationType": "ACTUAL"},
                {"notificationType": "FORECASTED", "subscriberSnsTopicArns": ["arn:aws:sns:t"]},
            ]
        },
        True,
    ),
    Case(
        "tracking-server-auth",
        DEPLOYMENT,
        deployment({"command": ["mlflow", "server"], "args": ["--app-name", "basic-auth"]}),
        False,
    ),
    Case(
        "tracking-server-auth",
        DEPLOYMENT,
        deployment({"args": ["sh", "-c", "mlflow server --host 0.0.0.0"]}),
        True,
    ),
]


@pytest.mark.parametrize("case", RESOURCE_CASES, ids=lambda c: f"{c.rule}-{'fail' if c.fails else 'pass'}")
def test_resource_rule(case: Case) -> None:
    messages = check_resource(case.rule, case.resource_type, case.props, case.config)
    assert bool(messages) == case.fails, messages


def bucket_with(
    *attached: tuple[str, dict[str, Any]],
    name: str = "datasets",
    bucket_props: dict[str, Any] | None = None,
    provider: dict[str, Any] | None = None,
) -> list[Any]:
    """A bucket plus settings resources joined to it through their ``bucket`` input."""
    bucket = res(BUCKET, name, {"tags": TAGS, **(bucket_props or {})}, provider=provider)
    return [bucket] + [
        res(t, f"{name}-{i}", {"bucket": f"{name}-id", **p}, provider=provider, deps={"bucket": bucket})
        for i, (t, p) in enumerate(attached)
    ]


KMS = (
    SSE,
    {
        "rules": [
            {
                "applyServerSideEncryptionByDefault": {
                    "sseAlgorithm": "aws:kms",
                    "kmsMasterKeyId": "arn:aws:kms:k",
                }
            }
        ]
    },
)
ALL_BLOCKED = (
    PAB,
    dict.fromkeys(
        ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"), True
    ),
)
TLS = (
    POLICY,
    {
        "policy": json.dumps(
            {
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": "*",
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ]
            }
        )
    },
)
PUBLIC_READ = (
    POLICY,
    {
        "policy": json.dumps(
            {
                "Statement": [
                    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "s3:GetObject", "Resource": "*"}
                ]
            }
        )
    },
)


def bucket_policy(statement: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return POLICY, {"policy": json.dumps({"Statement": [statement]})}


GPU = res(NODE_GROUP, "gpu", gpu_group())
EMAIL_BUDGET = res(
    "aws:budgets/budget:Budget",
    "budget",
    {"notifications": [{"notificationType": "ACTUAL", "subscriberEmailAddresses": ["a@example.com"]}]},
)
DEVICE_PLUGIN = res(
    "kubernetes:apps/v1:DaemonSet",
    "plugin",
    {
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "p", "image": "nvcr.io/nvidia/k8s-device-plugin:v0.16.2"}]}
            }
        }
    },
)
GPU_HOUR_ALERT = res(
    "kubernetes:monitoring.coreos.com/v1:PrometheusRule",
    "budget",
    {"spec": {"groups": [{"name": "cost", "rules": [{"alert": "GpuHourBudgetExceeded"}]}]}},
)


class StackCase(NamedTuple):
    rule: str
    resources: Callable[[], list[Any]]
    fails: bool
    config: dict[str, Any] | None = None


STACK_CASES = [
    StackCase("s3-bucket-kms-encryption", lambda: bucket_with(KMS), False),
    StackCase("s3-bucket-kms-encryption", lambda: bucket_with(), True),
    StackCase(
        "s3-bucket-kms-encryption",
        lambda: bucket_with(
            (SSE, {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]})
        ),
        True,
    ),
    StackCase(
        "s3-bucket-kms-encryption",
        lambda: bucket_with(
            (SSE, {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}]})
        ),
        True,
    ),
    StackCase(
        "s3-bucket-kms-encryption",
        lambda: bucket_with(
            (SSE, {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}]})
        ),
        False,
        {"requireCustomerKey": False},
    ),
    StackCase(
        "s3-bucket-kms-encryption",
        lambda: bucket_with(
            bucket_props={
                "serverSideEncryptionConfiguration": {
                    "rule": {
                        "applyServerSideEncryptionByDefault": {
                            "sseAlgorithm": "aws:kms",
                            "kmsMasterKeyId": "k",
                        }
                    }
                }
            }
        ),
        False,
    ),
    StackCase(
        "s3-bucket-kms-encryption",
        lambda: bucket_with(
            KMS,
            bucket_props={
                "serverSideEncryptionConfiguration": {
                    "rule": {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}
                }
            },
        ),
        False,
    ),
    StackCase(
        "s3-dataset-versioning",
        lambda: bucket_with((VERSIONING, {"versioningConfiguration": {"status": "Enabled"}})),
        False,
    ),
    StackCase(
        "s3-dataset-versioning",
        lambda: bucket_with((VERSIONING, {"versioningConfiguration": {"status": "Suspended"}})),
        True,
    ),
    StackCase("s3-dataset-versioning", lambda: bucket_with(), True),
    StackCase("s3-dataset-versioning", lambda: bucket_with(name="logs"), False),
    StackCase(
        "s3-dataset-versioning",
        lambda: bucket_with(
            name="logs", bucket_props={"loggings": [{"targetBucket": "datasets-access-logs"}]}
        ),
        False,
    ),  # only names count
    StackCase(
        "s3-dataset-versioning", lambda: bucket_with(name="b", bucket_props={"bucket": "ml-datasets"}), True
    ),
    StackCase(
        "s3-dataset-versioning",
        lambda: bucket_with(name="b", bucket_props={"tags": {**TAGS, "purpose": Secret("Datasets")}}),
        True,
    ),
    StackCase("s3-public-access-blocked", lambda: bucket_with(ALL_BLOCKED), False),
    StackCase("s3-public-access-blocked", lambda: bucket_with(), True),
    StackCase(
        "s3-public-access-blocked",
        lambda: bucket_with((PAB, {**ALL_BLOCKED[1], "restrictPublicBuckets": False})),
        True,
    ),
    StackCase(
        "s3-public-access-blocked",
        lambda: bucket_with(ALL_BLOCKED, bucket_props={"acl": "public-read"}),
        True,
    ),
    StackCase("s3-public-access-blocked", lambda: bucket_with(ALL_BLOCKED, PUBLIC_READ), True),
    StackCase("s3-public-access-blocked", lambda: bucket_with(TLS, provider=MINIO), False),
    StackCase("s3-public-access-blocked", lambda: bucket_with(PUBLIC_READ, provider=MINIO), True),
    StackCase(
        "s3-public-access-blocked",
        lambda: bucket_with(TLS, provider={"endpoints": json.dumps([{"sts": "https://sts.lab"}])}),
        True,
    ),  # still AWS S3
    StackCase(
        "s3-public-access-blocked",
        lambda: bucket_with(
            ALL_BLOCKED,
            bucket_policy({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}),
        ),
        True,
    ),
    StackCase(
        "s3-public-access-blocked",
        lambda: bucket_with(
            ALL_BLOCKED,
            bucket_policy(
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": "*",
                    "Condition": {"StringEquals": {"aws:SourceVpce": "vpce-1"}},
                }
            ),
        ),
        False,
    ),
    StackCase(
        "s3-public-access-blocked",
        lambda: bucket_with(
            ALL_BLOCKED,
            bucket_policy(
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::1:role/ds"},
                    "Action": "s3:GetObject",
                    "Resource": "*",
                }
            ),
        ),
        False,
    ),
    StackCase("s3-tls-only", lambda: bucket_with(TLS), False),
    StackCase("s3-tls-only", lambda: bucket_with(PUBLIC_READ), True),
    StackCase(
        "s3-tls-only",
        lambda: bucket_with(
            bucket_policy(
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": "*",
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            )
        ),
        True,
    ),
    StackCase(
        "s3-tls-only",
        lambda: bucket_with(
            bucket_policy(
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "*",
                    "Resource": "*",
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            )
        ),
        False,
    ),
    StackCase(
        "s3-tls-only",
        lambda: [res(BUCKET, "b", {"bucket": "named"}), res(POLICY, "p", {"bucket": "named", **TLS[1]})],
        False,
    ),
    StackCase("s3-retention-plan", lambda: bucket_with((LIFECYCLE, lifecycle())), False),
    StackCase("s3-retention-plan", lambda: bucket_with(), True),
    StackCase(
        "s3-retention-plan",
        lambda: bucket_with(
            bucket_props={"lifecycleRules": [{"enabled": True, "expiration": {"days": 1095}}]}
        ),
        False,
    ),
    StackCase(
        "s3-retention-plan",
        lambda: bucket_with(  # the attached configuration wins
            (LIFECYCLE, lifecycle(expiration=None)),
            bucket_props={"lifecycleRules": [{"enabled": True, "expiration": {"days": 1095}}]},
        ),
        True,
    ),
    StackCase("s3-retention-plan", lambda: bucket_with((LIFECYCLE, lifecycle(expiration=None))), True),
    StackCase("s3-cold-tier", lambda: bucket_with((LIFECYCLE, lifecycle())), False),
    StackCase(
        "s3-cold-tier", lambda: bucket_with((LIFECYCLE, lifecycle(transition=None)), provider=MINIO), True
    ),
    StackCase("required-tags", lambda: [res(BUCKET, "b", {"tags": TAGS})], False),
    StackCase("required-tags", lambda: [res(BUCKET, "b", {"tags": {"team": "ml"}})], True),
    StackCase(
        "required-tags",
        lambda: [
            res(
                BUCKET,
                "b",
                {"tags": {"team": "ml"}},
                provider={"defaultTags": json.dumps({"tags": {"cost-center": "cc", "environment": "dev"}})},
            )
        ],
        False,
    ),
    StackCase(
        "required-tags",
        lambda: [
            res(
                BUCKET,
                "b",
                {"tags": {"team": "ml"}},
                provider={"defaultTags": json.dumps({"tags": ["cost-center", "environment"]})},
            )
        ],
        True,
    ),
    StackCase("required-tags", lambda: [res("kubernetes:core/v1:ConfigMap", "c", {})], True),
    StackCase(
        "required-tags",
        lambda: [res("kubernetes:core/v1:ConfigMap", "c", {"metadata": {"labels": TAGS}})],
        False,
    ),
    StackCase("required-tags", lambda: [res("aws:iam/rolePolicy:RolePolicy", "p", {})], False),
    StackCase("required-tags", lambda: [res("aws:lambda/function:Function", "f", {})], True),
    StackCase("required-tags", lambda: [res("aws:newservice/widget:Widget", "w", {})], True),
    StackCase("required-tags", lambda: [res("kubernetes:helm.sh/v3:Release", "r", {})], False),
    StackCase("budget-for-gpu-stacks", lambda: [GPU], True),
    StackCase("budget-for-gpu-stacks", lambda: [GPU, EMAIL_BUDGET], False),
    StackCase("budget-for-gpu-stacks", lambda: [DEVICE_PLUGIN], True),
    StackCase("budget-for-gpu-stacks", lambda: [DEVICE_PLUGIN, GPU_HOUR_ALERT], False),
    StackCase(
        "budget-for-gpu-stacks",
        lambda: [
            res(
                "kubernetes:core/v1:NodePatch",
                "n",
                {"metadata": {"labels": {"nvidia.com/gpu.present": "true"}}},
            )
        ],
        True,
    ),
    StackCase(
        "budget-for-gpu-stacks",
        lambda: [
            GPU,
            res("aws:budgets/budget:Budget", "b", {"notifications": [{"notificationType": "ACTUAL"}]}),
        ],
        True,
    ),  # alerts nobody
    StackCase(
        "budget-for-gpu-stacks",
        lambda: [
            GPU,
            res(
                GPU_HOUR_ALERT.resource_type,
                "idle",
                {
                    "spec": {
                        "groups": [
                            {
                                "name": "gpu",
                                "rules": [{"alert": "GpuIdle", "expr": "budget_left > 0 and gpu_util < 0.1"}],
                            }
                        ]
                    }
                },
            ),
        ],
        True,
    ),
    StackCase(
        "budget-for-gpu-stacks",
        lambda: [
            res(
                "kubernetes:apps/v1:DaemonSet",
                "exporter",
                {
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {"name": "k8s-device-plugin-metrics", "image": "prom/node-exporter"}
                                ]
                            }
                        }
                    }
                },
            )
        ],
        False,
    ),
    StackCase("budget-for-gpu-stacks", lambda: bucket_with(), False),
]


@pytest.mark.parametrize("case", STACK_CASES, ids=lambda c: f"{c.rule}-{'fail' if c.fails else 'pass'}")
def test_stack_rule(case: StackCase) -> None:
    reported = check_stack(case.rule, case.resources(), case.config)
    assert bool(reported) == case.fails, reported


def test_every_rule_has_a_passing_and_a_failing_case() -> None:
    covered = {(c.rule, c.fails) for c in [*RESOURCE_CASES, *STACK_CASES]}
    missing = [
        (rule.id, fails) for rule in all_rules() for fails in (False, True) if (rule.id, fails) not in covered
    ]
    assert not missing


def test_stack_rules_name_the_violating_resource() -> None:
    bucket, block = bucket_with((PAB, {**ALL_BLOCKED[1], "blockPublicAcls": False}))
    assert check_stack("s3-public-access-blocked", [bucket, block]) == [
        (
            block.urn,
            "public access block 'datasets-0' of bucket 'datasets' does not set blockPublicAcls to true",
        )
    ]
    bucket, lifecycle_config = bucket_with((LIFECYCLE, lifecycle(transition=None)), provider=MINIO)
    assert check_stack("s3-cold-tier", [bucket, lifecycle_config]) == [
        (bucket.urn, "bucket 'datasets' (https://minio.lab:9000) never moves objects to cold storage")
    ]


def test_missing_tags_are_named_per_resource() -> None:
    bucket = res(BUCKET, "b", {"tags": {"team": "ml", "environment": ""}})
    crd = res(
        "kubernetes:monitoring.coreos.com/v1:PrometheusRule",
        "alerts",
        {"metadata": {"labels": {**TAGS, "team": Secret("ml")}}},
    )
    config_map = res("kubernetes:core/v1:ConfigMap", "c", {"metadata": {"labels": {"team": "x"}}})
    assert check_stack("required-tags", [bucket, crd, config_map]) == [
        (bucket.urn, "Bucket 'b' lacks tags: cost-center, environment"),
        (config_map.urn, "ConfigMap 'c' lacks labels: cost-center, environment"),
    ]
    assert check_stack("required-tags", [bucket], {"tags": ["team"]}) == []


def test_preview_unknowns_in_stack_rules() -> None:
    """During preview, outputs the provider computes are unknown: absent, not a rule failure;
    an input the program set from another resource's output is pending, so it counts as set."""
    key = res("aws:kms/key:Key", "key", {"enableKeyRotation": True})
    bucket = res(
        BUCKET,
        "datasets",
        {
            "tags": TAGS,
            "acl": UNKNOWN_STRING_VALUE,
            "serverSideEncryptionConfiguration": UNKNOWN_OBJECT_VALUE,
        },
    )
    sse = res(
        SSE,
        "sse",
        {
            "bucket": UNKNOWN_STRING_VALUE,
            "rules": [
                {
                    "applyServerSideEncryptionByDefault": {
                        "sseAlgorithm": "aws:kms",
                        "kmsMasterKeyId": UNKNOWN_STRING_VALUE,
                    }
                }
            ],
        },
        deps={"bucket": bucket, "rules": key},
    )
    assert check_stack("s3-bucket-kms-encryption", [key, bucket, sse]) == []
    assert check_stack("s3-bucket-kms-encryption", [key, bucket]) == [
        (bucket.urn, "bucket 'datasets' has no server-side encryption configuration")
    ]
