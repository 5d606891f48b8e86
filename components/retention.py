"""The data retention plan, written once and rendered to S3 lifecycle rules everywhere.

Why: "after 1 year objects move to cold storage, after 3 years they are deleted" is a
company rule, not a per-bucket setting; legal retention per region may forbid deleting
earlier. The plan validates those constraints, then renders the S3 API's own shape
(``PutBucketLifecycleConfiguration``), which is what both AWS and an S3-compatible on-prem
endpoint accept; the Pulumi form is derived from it mechanically, so the two cannot drift.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from components.base import Args

_IA_CLASSES = ("STANDARD_IA", "ONEZONE_IA")
"""Infrequent-access classes: S3 refuses transitions to them before day 30."""


class RetentionPlan(Args):
    """Cold tier after ``cold_after_days``, deletion after ``delete_after_days``.

    ``legal_minimum_days`` maps a region (``eu-west-1``, ``onprem``) to the shortest
    retention the law allows there; a plan that deletes earlier is refused for that region.
    """

    cold_after_days: int = Field(365, gt=0)
    delete_after_days: int = Field(1095, gt=0)
    cold_storage_class: str = "GLACIER"
    noncurrent_expire_days: int = Field(30, gt=0)
    abort_incomplete_upload_days: int = Field(7, gt=0)
    legal_minimum_days: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ordered(self) -> RetentionPlan:
        if self.cold_storage_class in _IA_CLASSES and self.cold_after_days < 30:
            raise ValueError(
                f"cold_after_days: S3 moves objects to {self.cold_storage_class} "
                "after 30 days at the earliest; use >= 30 or GLACIER"
            )
        if self.delete_after_days <= self.cold_after_days:
            raise ValueError(
                f"delete_after_days ({self.delete_after_days}) must be greater than "
                f"cold_after_days ({self.cold_after_days}): objects go cold before deletion"
            )
        return self

    def check_region(self, region: str) -> None:
        """Refuse a plan that deletes sooner than the law of ``region`` allows."""
        minimum = self.legal_minimum_days.get(region, 0)
        if self.delete_after_days < minimum:
            raise ValueError(
                f"retention.delete_after_days: {self.delete_after_days} is shorter than the "
                f"legal minimum of {minimum} days in {region}; raise it to >= {minimum}"
            )

    def s3_rules(self, cold_storage_class: str | None = None) -> list[dict[str, Any]]:
        """The rules in the S3 API's shape (boto3 ``LifecycleConfiguration['Rules']``).

        ``cold_storage_class`` overrides the plan's class (an on-prem endpoint names its cold
        tier itself); an empty string means the endpoint has no cold tier, so only the
        deletion half of the plan is applied.
        """
        storage_class = self.cold_storage_class if cold_storage_class is None else cold_storage_class
        current: dict[str, Any] = {
            "ID": "retention-current",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "Expiration": {"Days": self.delete_after_days},
        }
        noncurrent: dict[str, Any] = {
            "ID": "retention-noncurrent",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": self.noncurrent_expire_days},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": self.abort_incomplete_upload_days},
        }
        if storage_class:
            current["Transitions"] = [{"Days": self.cold_after_days, "StorageClass": storage_class}]
        return [current, noncurrent]

    def pulumi_rules(self, cold_storage_class: str | None = None) -> list[dict[str, Any]]:
        """The same rules as ``aws.s3.BucketLifecycleConfiguration`` ``rules`` inputs."""
        return [_snake_keys(rule) for rule in self.s3_rules(cold_storage_class)]


def _snake_keys(value: Any) -> Any:
    """S3 API keys (``NoncurrentDays``, ``ID``) to Pulumi's (``noncurrent_days``, ``id``)."""
    if isinstance(value, dict):
        return {_snake(k): _snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    return value


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", key).lower()
