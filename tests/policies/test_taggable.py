"""Which types must carry the organisation's tags: the pack's own answer, failing closed."""

from __future__ import annotations

import pytest

from policies.taggable import tag_carrier


@pytest.mark.parametrize(
    "type_token, carrier",
    [
        ("aws:s3/bucket:Bucket", "tags"),
        ("aws:lambda/function:Function", "tags"),  # SDK module pulumi_aws.lambda_
        ("aws:iam/rolePolicy:RolePolicy", None),  # the SDK's class takes no tags
        ("aws:newservice/widget:Widget", "tags"),  # unknown to the pack's SDK: fails closed
        ("aws:s3/bucket:NoSuchClass", "tags"),
        ("kubernetes:core/v1:ConfigMap", "metadata.labels"),
        ("kubernetes:rbac.authorization.k8s.io/v1:Role", "metadata.labels"),
        ("kubernetes:monitoring.coreos.com/v1:PrometheusRule", "metadata.labels"),  # a CRD
        ("kubernetes:helm.sh/v3:Release", None),  # no metadata input
        ("pulumi:providers:aws", None),
        ("random:index/randomPassword:RandomPassword", None),
        ("pulumi-python:dynamic:Resource", None),
        ("not-a-type-token", None),
    ],
)
def test_tag_carrier(type_token: str, carrier: str | None) -> None:
    assert tag_carrier(type_token) == carrier
