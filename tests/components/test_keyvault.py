"""KeyVault: secrets stay Pulumi secrets, and only the named readers may read them."""

from __future__ import annotations

import json

import pulumi
import pytest

from components.base import ArgsError, OrgTags
from components.keyvault import KeyVault, KeyVaultArgs
from policies.offline import Secret, run_program
from tests.programs import missing_tags, plaintext_occurrences

TAGS = OrgTags(team="ml-platform", cost_center="cc-4711", environment="prod")
READER = "arn:aws:iam::123456789012:role/mlflow-server"
DS = "arn:aws:iam::123456789012:role/data-scientists"
DB_URI = "postgresql://mlflow:s3cr3t-pw@db.internal:5432/mlflow"


def _vault(**overrides):
    def program():
        cfg = pulumi.Config("platform")
        args = {
            "platform": "aws",
            "tags": TAGS,
            "prefix": "hybridml/prod",
            "secrets": {"tracking-db-uri": cfg.require_secret("dbUri")},
            "reader_principals": [READER],
            "key_user_principals": [DS],
            **overrides,
        }
        vault = KeyVault("vault", KeyVaultArgs(**args))
        pulumi.export("refs", vault.secret_refs)

    return run_program(program, config={"platform:dbUri": DB_URI}, secret_keys=("platform:dbUri",))


def test_aws_key_rotates_and_only_key_users_use_it():
    result = _vault()
    (key,) = result.by_type("aws:kms/key:Key")
    assert key.inputs["enableKeyRotation"] is True
    statements = {s["Sid"]: s for s in json.loads(key.inputs["policy"])["Statement"]}
    assert statements["KeyUsersEncryptDecrypt"]["Principal"] == {"AWS": [DS]}
    assert "kms:*" not in statements["KeyUsersEncryptDecrypt"]["Action"]


def test_aws_secret_is_encrypted_with_the_vault_key_and_reader_only():
    result = _vault()
    (key,) = result.by_type("aws:kms/key:Key")
    (secret,) = result.by_type("aws:secretsmanager/secret:Secret")
    assert secret.inputs["name"] == "hybridml/prod/tracking-db-uri"
    assert secret.inputs["kmsKeyId"] == key.outputs["arn"]
    (policy,) = result.by_type("aws:secretsmanager/secretPolicy:SecretPolicy")
    doc = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    assert doc["NamedReadersRead"]["Principal"] == {"AWS": [READER]}
    deny = doc["DenyEveryoneElse"]
    assert deny["Effect"] == "Deny" and deny["Action"] == "secretsmanager:GetSecretValue"
    assert deny["Condition"] == {"StringNotLike": {"aws:PrincipalArn": [READER]}}
    assert result.outputs["refs"] == {"tracking-db-uri": secret.outputs["arn"]}


def test_no_plaintext_secret_anywhere():
    result = _vault()
    (version,) = result.by_type("aws:secretsmanager/secretVersion:SecretVersion")
    assert version.raw_inputs["secretString"] == Secret(DB_URI)
    assert plaintext_occurrences(result, "s3cr3t-pw") == []


def test_a_plain_string_value_is_still_made_secret():
    result = _vault(secrets={"api-token": "tok-123456"})
    assert plaintext_occurrences(result, "tok-123456") == []


def test_onprem_secret_is_readable_only_through_the_bound_role():
    result = _vault(
        platform="onprem", reader_principals=["ServiceAccount:hybridml:mlflow"], key_user_principals=[]
    )
    (secret,) = result.by_type("kubernetes:core/v1:Secret")
    assert secret.raw_inputs["stringData"] == Secret({"tracking-db-uri": DB_URI})
    assert secret.inputs["metadata"]["namespace"] == "hybridml"
    (role,) = result.by_type("kubernetes:rbac.authorization.k8s.io/v1:Role")
    assert role.inputs["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hybridml-prod"], "verbs": ["get"]}
    ]
    (binding,) = result.by_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding")
    assert binding.inputs["subjects"] == [
        {"kind": "ServiceAccount", "name": "mlflow", "namespace": "hybridml"}
    ]
    assert binding.inputs["roleRef"]["name"] == role.inputs["metadata"]["name"]
    assert result.by_type("aws:kms/key:Key") == []
    assert plaintext_occurrences(result, "s3cr3t-pw") == []
    assert missing_tags(result, TAGS.as_tags()) == []


def test_onprem_sync_reads_the_aws_vault_and_keeps_it_secret():
    result = _vault(
        platform="onprem",
        reader_principals=["Group:ml-admins"],
        secrets={"tracking-db-uri": None},
        sync_from_aws_prefix="hybridml/prod",
    )
    (secret,) = result.by_type("kubernetes:core/v1:Secret")
    synced = "mock-secret:hybridml/prod/tracking-db-uri"
    assert secret.raw_inputs["stringData"] == Secret({"tracking-db-uri": synced})
    assert plaintext_occurrences(result, synced) == []


def test_tags_on_everything_taggable():
    assert missing_tags(_vault(), TAGS.as_tags()) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"reader_principals": []}, "reader_principals: List should have at least 1 item"),
        ({"platform": "onprem", "reader_principals": ["mlflow"]}, "are not Kubernetes subjects"),
        ({"reader_principals": ["mlflow"]}, "on platform 'aws' give IAM role ARNs"),
        ({"secrets": {"Bad_Name": "x"}}, "secret name 'Bad_Name' must be lowercase"),
        ({"secrets": {"db": None}}, r"secrets \['db'\] have no value"),
    ],
)
def test_bad_args_say_what_to_fix(overrides, message):
    with pytest.raises(ArgsError, match=message):
        _vault(**overrides)
