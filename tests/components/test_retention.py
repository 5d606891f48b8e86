"""RetentionPlan: validated, and its rendered rules are what a real S3 API stores."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.base import ArgsError
from components.retention import RetentionPlan

_BUCKETS = itertools.count()


def _roundtrip(s3, name: str, rules: list[dict]) -> list[dict]:
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": rules})
    return s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]


def test_default_plan_is_one_year_cold_three_years_delete():
    rules = {r["ID"]: r for r in RetentionPlan().s3_rules()}
    current = rules["retention-current"]
    assert current["Transitions"] == [{"Days": 365, "StorageClass": "GLACIER"}]
    assert current["Expiration"] == {"Days": 1095}
    noncurrent = rules["retention-noncurrent"]
    assert noncurrent["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert noncurrent["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}


@pytest.mark.parametrize(
    "plan, cold_class",
    [
        (RetentionPlan(), None),
        (
            RetentionPlan(
                cold_after_days=90,
                delete_after_days=2555,
                noncurrent_expire_days=7,
                abort_incomplete_upload_days=1,
                cold_storage_class="DEEP_ARCHIVE",
            ),
            None,
        ),
        (RetentionPlan(), ""),  # an endpoint without a cold tier: deletion only
    ],
)
def test_rules_round_trip_through_the_s3_api(s3, plan, cold_class, request):
    rules = plan.s3_rules(cold_class)
    stored = _roundtrip(s3, f"retention-{request.node.callspec.id.lower()}"[:60], rules)
    assert stored == rules


def test_pulumi_rules_are_the_s3_rules_in_pulumi_names():
    rule = RetentionPlan(cold_after_days=30, delete_after_days=60).pulumi_rules()[0]
    assert rule == {
        "id": "retention-current",
        "status": "Enabled",
        "filter": {"prefix": ""},
        "expiration": {"days": 60},
        "transitions": [{"days": 30, "storage_class": "GLACIER"}],
    }
    second = RetentionPlan().pulumi_rules()[1]
    assert second["noncurrent_version_expiration"] == {"noncurrent_days": 30}
    assert second["abort_incomplete_multipart_upload"] == {"days_after_initiation": 7}


def test_delete_before_cold_is_refused():
    with pytest.raises(ArgsError, match="delete_after_days .* must be greater than cold"):
        RetentionPlan(cold_after_days=400, delete_after_days=365)


@pytest.mark.parametrize(
    "field",
    ["cold_after_days", "delete_after_days", "noncurrent_expire_days", "abort_incomplete_upload_days"],
)
def test_non_positive_days_name_the_field(field):
    with pytest.raises(ArgsError, match=f"{field}: Input should be greater than 0"):
        RetentionPlan(**{field: 0})


def test_legal_minimum_per_region():
    plan = RetentionPlan(delete_after_days=1095, legal_minimum_days={"eu-central-1": 3650})
    plan.check_region("eu-west-1")
    with pytest.raises(ValueError, match="legal minimum of 3650 days in eu-central-1"):
        plan.check_region("eu-central-1")


def test_infrequent_access_needs_30_days():
    with pytest.raises(ArgsError, match="after 30 days at the earliest"):
        RetentionPlan(cold_after_days=7, cold_storage_class="STANDARD_IA")


def test_unknown_key_is_refused():
    with pytest.raises(ArgsError, match="cold_days: unknown field"):
        RetentionPlan(cold_days=3)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cold=st.integers(1, 3000),
    extra=st.integers(1, 3000),
    noncurrent=st.integers(1, 400),
    abort=st.integers(1, 30),
    cold_class=st.sampled_from(["GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "STANDARD_IA"]),
)
def test_any_valid_plan_round_trips(s3, cold, extra, noncurrent, abort, cold_class):
    cold = max(cold, 30) if cold_class == "STANDARD_IA" else cold
    plan = RetentionPlan(
        cold_after_days=cold,
        delete_after_days=cold + extra,
        noncurrent_expire_days=noncurrent,
        abort_incomplete_upload_days=abort,
        cold_storage_class=cold_class,
    )
    rules = plan.s3_rules()
    bucket = f"prop-{next(_BUCKETS)}"
    assert _roundtrip(s3, bucket, rules) == rules
