"""ObjectStore on AWS and on an S3-compatible endpoint: one contract, two platforms."""

from __future__ import annotations

import json

import pytest

from components.base import ArgsError, OrgTags
from components.object_store import ObjectStore, ObjectStoreArgs, StorageEndpoint
from components.retention import RetentionPlan
from policies.offline import ProgramResult, run_program
from tests.programs import missing_tags, plaintext_occurrences

DS = ["arn:aws:iam::123456789012:role/data-scientists"]
LABELLERS = ["arn:aws:iam::123456789012:role/labelling-vendor"]
TAGS = OrgTags(team="ml-platform", cost_center="cc-4711", environment="dev")


class ObjectStoreContract:
    """What every platform's ObjectStore guarantees."""

    def build(self, **overrides) -> ObjectStore:
        raise NotImplementedError

    def deploy(self, **overrides) -> ProgramResult:
        return run_program(lambda: self.build(**overrides))

    def _one(self, result: ProgramResult, type_token: str) -> dict:
        (res,) = result.by_type(type_token)
        return res.inputs

    def _policy(self, result: ProgramResult) -> dict:
        return json.loads(self._one(result, "aws:s3/bucketPolicy:BucketPolicy")["policy"])

    def test_versioning_enabled(self):
        versioning = self._one(self.deploy(), "aws:s3/bucketVersioning:BucketVersioning")
        assert versioning["versioningConfiguration"] == {"status": "Enabled"}

    def test_lifecycle_follows_the_retention_plan(self):
        result = self.deploy(retention=RetentionPlan(cold_after_days=200, delete_after_days=800))
        rules = self._one(result, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
        current = next(r for r in rules["rules"] if r["id"] == "retention-current")
        assert current["expiration"] == {"days": 800}
        assert current.get("transitions", []) == self.expected_transitions(200)

    def test_tls_only_policy(self):
        deny = next(
            s for s in self._policy(self.deploy())["Statement"] if s["Sid"] == "DenyInsecureTransport"
        )
        assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    def test_labeller_access_is_prefix_scoped(self):
        result = self.deploy(labeller_prefix="vendor-a/")
        (store,) = result.by_type("hybridml:storage:ObjectStore")
        labellers = json.loads(store.outputs["access_policies"]["labellers"])["Statement"]
        resources = [s["Resource"] for s in labellers]
        assert resources == [store.outputs["arn"], f"{store.outputs['arn']}/vendor-a/*"]
        assert labellers[0]["Condition"] == {"StringLike": {"s3:prefix": ["vendor-a/*"]}}
        assert "s3:DeleteObject" not in labellers[1]["Action"]

    def test_children_are_parented_named_and_tagged(self):
        result = self.deploy()
        (store,) = result.by_type("hybridml:storage:ObjectStore")
        custom = [r for r in result.resources if r.custom and not r.is_provider]
        assert custom and all(r.parent == store.urn for r in custom)
        assert all(r.name.startswith("data-") for r in custom)
        assert missing_tags(result, TAGS.as_tags()) == []

    def test_bad_prefix_names_the_field(self):
        with pytest.raises(ArgsError, match="labeller_prefix: .*must look like 'labelling/'"):
            self.deploy(labeller_prefix="/abs")


class TestAwsObjectStore(ObjectStoreContract):
    def build(self, **overrides) -> ObjectStore:
        args = {
            "platform": "aws",
            "tags": TAGS,
            "region": "eu-west-1",
            "kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/k1",
            "data_scientist_principals": DS,
            "labeller_principals": LABELLERS,
            **overrides,
        }
        return ObjectStore("data", ObjectStoreArgs(**args))

    def expected_transitions(self, days: int) -> list[dict]:
        return [{"days": days, "storageClass": "GLACIER"}]

    def test_kms_encryption_with_the_vault_key(self):
        sse = self._one(
            self.deploy(),
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        )
        default = sse["rules"][0]["applyServerSideEncryptionByDefault"]
        assert default == {
            "sseAlgorithm": "aws:kms",
            "kmsMasterKeyId": "arn:aws:kms:eu-west-1:123456789012:key/k1",
        }

    def test_public_access_blocked(self):
        block = self._one(self.deploy(), "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        flags = ["blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"]
        assert all(block[f] is True for f in flags)

    def test_policy_waits_for_the_access_block(self):
        result = self.deploy()
        (policy,) = result.by_type("aws:s3/bucketPolicy:BucketPolicy")
        (block,) = result.by_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        assert block.urn in policy.options.depends_on

    def test_bucket_policy_grants_roles_and_s3_accepts_it(self, s3):
        result = self.deploy()
        policy = self._policy(result)
        by_sid = {s["Sid"]: s for s in policy["Statement"]}
        assert by_sid["DataScientistsReadWrite"]["Principal"] == {"AWS": DS}
        assert by_sid["LabellersReadWritePrefix"]["Principal"] == {"AWS": LABELLERS}
        assert by_sid["LabellersReadWritePrefix"]["Resource"].endswith("/labelling/*")
        # The rendered document is valid for a real S3 API (moto server).
        s3.create_bucket(Bucket="data-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        text = json.dumps(policy)
        s3.put_bucket_policy(Bucket="data-bucket", Policy=text)
        assert json.loads(s3.get_bucket_policy(Bucket="data-bucket")["Policy"]) == json.loads(text)

    def test_legal_minimum_retention_is_enforced_for_the_region(self):
        plan = RetentionPlan(legal_minimum_days={"eu-central-1": 3650})
        with pytest.raises(ArgsError, match="legal minimum of 3650 days in eu-central-1"):
            self.build(region="eu-central-1", retention=plan)

    def test_endpoint_url_on_aws_is_refused(self):
        with pytest.raises(ArgsError, match="platform 'aws' uses S3 itself"):
            self.build(endpoint=StorageEndpoint.minio("https://minio:9000"))

    def test_unknown_platform_lists_the_allowed_values(self):
        with pytest.raises(ArgsError, match="platform: Input should be 'aws' or 'onprem'"):
            self.build(platform="gcp")


class TestOnpremObjectStore(ObjectStoreContract):
    ENDPOINT = StorageEndpoint.minio("https://minio.lab.internal:9000", cold_storage_class="COLD")

    def build(self, **overrides) -> ObjectStore:
        provider = self.ENDPOINT.provider("minio", access_key="AKIAMINIO", secret_key="minio-secret-key")
        args = {
            "platform": "onprem",
            "tags": TAGS,
            "region": "onprem",
            "kms_key_id": "hybridml-data",
            "data_scientist_principals": ["data-scientists"],
            "labeller_principals": ["labelling-vendor"],
            "endpoint": self.ENDPOINT,
            "provider": provider,
            **overrides,
        }
        return ObjectStore("data", ObjectStoreArgs(**args))

    def expected_transitions(self, days: int) -> list[dict]:
        return [{"days": days, "storageClass": "COLD"}]

    def test_all_children_go_through_the_endpoint_provider(self):
        result = self.deploy()
        (provider,) = result.by_type("pulumi:providers:aws")
        assert provider.inputs["endpoints"] == json.dumps([{"s3": self.ENDPOINT.url}])
        assert provider.inputs["s3UsePathStyle"] == "true"
        buckets = [r for r in result.resources if r.type.startswith("aws:s3/")]
        assert len(buckets) == 5
        assert all(r.options.provider.startswith(provider.urn) for r in buckets)

    def test_endpoint_credentials_are_secrets(self):
        result = self.deploy()
        assert plaintext_occurrences(result, "minio-secret-key") == []
        assert plaintext_occurrences(result, "AKIAMINIO") == []

    def test_no_public_access_block_and_no_principals_where_unsupported(self):
        result = self.deploy()
        assert result.by_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock") == []
        assert [s["Sid"] for s in self._policy(result)["Statement"]] == ["DenyInsecureTransport"]

    def test_without_a_cold_tier_only_deletion_applies(self):
        endpoint = StorageEndpoint.minio("https://minio.lab.internal:9000")
        result = self.deploy(endpoint=endpoint)
        rules = self._one(result, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
        assert "transitions" not in rules["rules"][0]
        assert rules["rules"][0]["expiration"] == {"days": 1095}

    def test_onprem_without_provider_is_refused(self):
        with pytest.raises(ArgsError, match="platform 'onprem' needs endpoint="):
            ObjectStoreArgs(
                platform="onprem",
                tags=TAGS,
                region="onprem",
                kms_key_id="k",
                data_scientist_principals=["ds"],
            )
