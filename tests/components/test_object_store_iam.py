"""The ObjectStore's access grants and retention, tried against a moto server that enforces IAM.

The policies are the ones the component generates (run under Pulumi's mocks), loaded as IAM
users' policies into a separate moto process started with ``INITIAL_NO_AUTH_ACTION_COUNT``,
so every request after the set-up is authenticated and authorised: the labeller reads and
writes under its prefix and nowhere else, data scientists read and write the datasets, a
user without a policy reads nothing. The lifecycle the component plans is put into that
bucket and read back equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from components.base import OrgTags
from components.object_store import ObjectStore, ObjectStoreArgs
from components.retention import RetentionPlan
from policies.offline import run_program
from tests.conftest import moto_server

pytestmark = pytest.mark.server  # starts its own moto server

SETUP_ACTIONS = 3
"""Unauthenticated requests moto allows: create the admin, give it a policy, make its key."""
ARGS = {
    "platform": "aws",
    "tags": OrgTags(team="ml-platform", cost_center="cc-4711", environment="dev"),
    "region": "eu-west-1",
    "kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/k1",
    "data_scientist_principals": ["arn:aws:iam::123456789012:role/data-scientists"],
    "labeller_principals": ["arn:aws:iam::123456789012:role/labelling-vendor"],
    "retention": RetentionPlan(cold_after_days=200, delete_after_days=800),
}


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    """The stack's plan for one store: its bucket name, role policies and lifecycle rules."""
    result = run_program(lambda: ObjectStore("datasets", ObjectStoreArgs(**ARGS)))
    (store,) = result.by_type("hybridml:storage:ObjectStore")
    (lifecycle,) = result.by_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    return {
        "bucket": store.outputs["bucket"],
        "policies": store.outputs["access_policies"],
        "rules": lifecycle.inputs["rules"],
    }


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("moto-iam") / "moto.log"
    with moto_server(log, {"INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}) as url:
        yield url


def _client(service: str, url: str, key: dict[str, str] | None = None) -> Any:
    import boto3

    creds = {"aws_access_key_id": "anon", "aws_secret_access_key": "anon"}
    if key:
        creds = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
    return boto3.client(service, endpoint_url=url, region_name="eu-west-1", **creds)


def _s3_shape(value: Any) -> Any:
    """Pulumi's camelCase rule inputs in the S3 API's shape (``noncurrentDays`` -> ``NoncurrentDays``)."""
    if isinstance(value, dict):
        return {("ID" if k == "id" else k[0].upper() + k[1:]): _s3_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_s3_shape(v) for v in value]
    return value


@pytest.fixture(scope="module")
def world(iam_moto, plan) -> dict[str, Any]:
    iam = _client("iam", iam_moto)
    iam.create_user(UserName="admin")
    iam.put_user_policy(
        UserName="admin",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    admin_key = iam.create_access_key(UserName="admin")["AccessKey"]
    iam = _client("iam", iam_moto, admin_key)
    s3 = _client("s3", iam_moto, admin_key)
    bucket = plan["bucket"]
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": _s3_shape(plan["rules"])}
    )
    for key in ("datasets/train/a.csv", "labelling/batch-1/img.json", "secret/other.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"seed")
    users: dict[str, Any] = {"admin": s3}
    for user, role in (("scientist", "data-scientists"), ("labeller", "labellers"), ("outsider", None)):
        iam.create_user(UserName=user)
        if role:
            iam.put_user_policy(UserName=user, PolicyName=role, PolicyDocument=plan["policies"][role])
        users[user] = _client("s3", iam_moto, iam.create_access_key(UserName=user)["AccessKey"])
    return {"bucket": bucket, "s3": users}


def _allowed(call: Any, **kw: Any) -> bool:
    from botocore.exceptions import ClientError

    try:
        call(**kw)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        assert code in ("AccessDenied", "403"), f"refused for another reason: {code}"
        return False
    return True


def _tries(s3: Any, bucket: str, key: str) -> dict[str, bool]:
    return {
        "get": _allowed(s3.get_object, Bucket=bucket, Key=key),
        "put": _allowed(s3.put_object, Bucket=bucket, Key=key, Body=b"new"),
    }


def _lists(s3: Any, bucket: str, key: str) -> bool:
    return _allowed(s3.list_objects_v2, Bucket=bucket, Prefix=key.rsplit("/", 1)[0] + "/")


GRANTS = [
    ("labeller", "labelling/batch-1/img.json", True),
    ("labeller", "datasets/train/a.csv", False),
    ("labeller", "secret/other.txt", False),
    ("scientist", "datasets/train/a.csv", True),
    ("scientist", "labelling/batch-1/img.json", True),
    ("outsider", "datasets/train/a.csv", False),
    ("outsider", "labelling/batch-1/img.json", False),
]
MOTO_IGNORES_PREFIX_CONDITION = pytest.mark.xfail(
    strict=True,
    reason="moto passes no s3:prefix to IAM conditions (moto/iam/utils.py: only sts:ExternalId), so "
    "the labeller's ListBucket condition is not evaluated there; AWS evaluates it",
)


@pytest.mark.parametrize("user,key,allowed", GRANTS)
def test_the_generated_policies_grant_exactly_their_role(world, user, key, allowed):
    assert _tries(world["s3"][user], world["bucket"], key) == {"get": allowed, "put": allowed}


@pytest.mark.parametrize(
    "user,key,allowed",
    [
        pytest.param(*g, marks=MOTO_IGNORES_PREFIX_CONDITION) if g[0] == "labeller" and not g[2] else g
        for g in GRANTS
    ],
)
def test_listing_follows_the_same_grants(world, user, key, allowed):
    assert _lists(world["s3"][user], world["bucket"], key) == allowed


def test_moto_enforces_iam_at_all(world, iam_moto):
    """Guards the tests above: an unknown key is refused, so 'allowed' means a policy allowed it."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        _client("s3", iam_moto).list_objects_v2(Bucket=world["bucket"])


def test_the_lifecycle_read_back_matches_the_plan(world, plan):
    got = world["s3"]["admin"].get_bucket_lifecycle_configuration(Bucket=world["bucket"])["Rules"]
    assert _norm(got) == _norm(_s3_shape(plan["rules"]))
    current = next(r for r in got if r["ID"] == "retention-current")
    assert current["Expiration"] == {"Days": 800}
    assert current["Transitions"] == [{"Days": 200, "StorageClass": "GLACIER"}]


def _norm(rules: list[dict]) -> list[dict]:
    return sorted(rules, key=lambda r: r["ID"])
