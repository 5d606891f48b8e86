"""Rules never crash on inputs of an unexpected shape.

A rule that raises during ``pulumi preview`` fails the whole policy run, so every rule must
treat a wrong-typed input (a string where a list was expected, a list for a map...) as
"not what I look for" and carry on. Hypothesis feeds each rule arbitrary JSON-like inputs
under the keys the rules read.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.registry import all_rules
from tests.policies.conftest import check_resource, check_stack, res

KEYS = [
    "tags",
    "bucket",
    "rules",
    "policy",
    "acl",
    "ingress",
    "instanceTypes",
    "amiType",
    "scalingConfig",
    "maxSize",
    "taints",
    "key",
    "effect",
    "metadata",
    "labels",
    "spec",
    "template",
    "containers",
    "env",
    "name",
    "value",
    "command",
    "args",
    "image",
    "notifications",
    "notificationType",
    "subscriberEmailAddresses",
    "environment",
    "variables",
    "containerDefinitions",
    "inlinePolicies",
    "policyArn",
    "enableKeyRotation",
    "rotationPeriodInDays",
    "keySpec",
    "metadataOptions",
    "httpTokens",
    "capacityType",
    "instanceType",
    "instanceMarketOptions",
    "marketType",
    "lifecycleRules",
    "status",
    "enabled",
    "transitions",
    "days",
    "expiration",
    "noncurrentVersionExpiration",
    "versioningConfiguration",
    "applyServerSideEncryptionByDefault",
    "sseAlgorithm",
    "serverSideEncryptionConfiguration",
    "rule",
    "roleRef",
    "verbs",
    "resources",
    "data",
    "Statement",
    "Effect",
    "Action",
    "Resource",
    "Principal",
    "AWS",
    "Condition",
    "Bool",
    "aws:SecureTransport",
    "fromPort",
    "toPort",
    "protocol",
    "cidrBlocks",
    "ipProtocol",
    "cidrIpv4",
    "type",
    "groups",
    "alert",
]
json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5000)
    | st.sampled_from(
        [
            "*",
            "Enabled",
            "aws:kms",
            "0.0.0.0/0",
            "SPOT",
            "nvidia.com/gpu",
            "g5.xlarge",
            "{}",
            "[]",
            "ingress",
            "-1",
            "mlflow server",
            "AKIAIOSFODNN7EXAMPLE",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=16,
)
props_strategy = st.dictionaries(st.sampled_from(KEYS), json_like, max_size=6)
RESOURCE_RULES = [r for r in all_rules() if r.scope == "resource"]
STACK_TYPES = [
    "aws:s3/bucket:Bucket",
    "aws:s3/bucketPolicy:BucketPolicy",
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
    "aws:eks/nodeGroup:NodeGroup",
    "aws:budgets/budget:Budget",
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:core/v1:ConfigMap",
]
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(rule_index=st.integers(0, len(RESOURCE_RULES) - 1), props=props_strategy, pick=st.integers(0, 100))
def test_resource_rules_survive_any_shape(rule_index: int, props: dict[str, Any], pick: int) -> None:
    rule = RESOURCE_RULES[rule_index]
    types = sorted(rule.types or ["kubernetes:apps/v1:Deployment"])
    messages = check_resource(rule.id, types[pick % len(types)], props)
    assert all(isinstance(m, str) and m for m in messages)


@pytest.mark.parametrize("cidr", [{"tags": None}, ["0.0.0.0/0"], 7])
def test_ingress_rules_take_a_cidr_that_is_no_string(cidr: Any) -> None:
    """What hypothesis found once (a map where a security-group rule's CIDR goes): every rule of
    every resource type survives it; nothing that is not a CIDR string opens a port to the world."""
    for rule in RESOURCE_RULES:
        for resource_type in sorted(rule.types or []):
            props = {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv4": cidr, "cidrIpv6": cidr}
            messages = check_resource(rule.id, resource_type, props)
            assert all(isinstance(m, str) and m for m in messages)
            assert not any("0.0.0.0/0" in m or "world" in m.lower() for m in messages), (rule.id, messages)


@fast
@given(members=st.lists(st.tuples(st.sampled_from(STACK_TYPES), props_strategy), max_size=5))
def test_stack_rules_survive_any_shape(members: list[tuple[str, dict[str, Any]]]) -> None:
    resources = [res(t, f"r{i}", p) for i, (t, p) in enumerate(members)]
    for i, resource in enumerate(resources[1:], 1):
        resource.property_dependencies["bucket"] = [resources[i - 1]]
    for rule in all_rules():
        if rule.scope == "stack":
            reported = check_stack(rule.id, resources)
            assert all(isinstance(message, str) for _, message in reported)


#: Shapes hypothesis rarely reaches: a wrong type exactly where a rule compares or indexes.
ODD_SHAPES = [
    (
        "gpu-nodepool-max-size",
        "aws:eks/nodeGroup:NodeGroup",
        {"amiType": "AL2_x86_64_GPU", "scalingConfig": {"maxSize": "*"}},
        True,
    ),
    (
        "s3-retention-limits",
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
        {"rules": [{"status": "Enabled", "transitions": [{"days": "x"}], "expiration": "y"}]},
        False,
    ),
    (
        "s3-retention-limits",
        "aws:s3/bucket:Bucket",
        {"lifecycleRules": [{"enabled": True, "transitions": "x", "expiration": {"days": "4000"}}]},
        True,
    ),
    ("kms-key-rotation", "aws:kms/key:Key", {"enableKeyRotation": True, "rotationPeriodInDays": "a"}, False),
    (
        "sg-no-public-ssh",
        "aws:ec2/securityGroup:SecurityGroup",
        {"ingress": [{"protocol": "tcp", "fromPort": "ssh", "cidrBlocks": ["0.0.0.0/0"]}]},
        True,
    ),
    ("sg-no-public-ssh", "aws:ec2/securityGroup:SecurityGroup", {"ingress": "x"}, False),
    (
        "workload-env-secret-refs",
        "aws:lambda/function:Function",
        {"environment": {"variables": ["DB_PASSWORD"]}},
        False,
    ),
    (
        "workload-env-secret-refs",
        "aws:ecs/taskDefinition:TaskDefinition",
        {"containerDefinitions": "not json"},
        False,
    ),
    ("iam-no-wildcard-admin", "aws:iam/policy:Policy", {"policy": '{"Statement": "x"}'}, False),
    (
        "tracking-server-auth",
        "kubernetes:apps/v1:Deployment",
        {"spec": {"template": {"spec": {"containers": "x"}}}},
        False,
    ),
]


@pytest.mark.parametrize(
    "rule_id, resource_type, props, fails", ODD_SHAPES, ids=[f"{c[0]}-{i}" for i, c in enumerate(ODD_SHAPES)]
)
def test_odd_shapes(rule_id: str, resource_type: str, props: dict[str, Any], fails: bool) -> None:
    """Unusable values count as absent: a missing bound fails, a missing extra passes."""
    assert bool(check_resource(rule_id, resource_type, props)) == fails
