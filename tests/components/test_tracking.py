"""TrackingServer: one authenticated MLflow whose secrets never leave Pulumi secrets."""

from __future__ import annotations

import pulumi
import pytest

from components.base import ArgsError, OrgTags
from components.tracking import TrackingServer, TrackingServerArgs
from policies.offline import run_program
from tests.programs import missing_tags, plaintext_occurrences

TAGS = OrgTags(team="ml-platform", cost_center="cc-4711", environment="prod")
DB_URI = "postgresql://mlflow:db-pa55@pg.internal:5432/mlflow"
ADMIN = "adm1n-pa55"
MINIO_SECRET = "minio-s3cr3t"


def _deploy(**overrides):
    def program():
        cfg = pulumi.Config("platform")
        args = {
            "platform": "aws",
            "tags": TAGS,
            "hostname": "mlflow.example.com",
            "db_uri": cfg.require_secret("db"),
            "admin_password": cfg.require_secret("adm"),
            "artifact_bucket": "artifacts-bucket",
            "service_account_role_arn": "arn:aws:iam::123456789012:role/mlflow",
            **overrides,
        }
        if args["platform"] == "onprem":
            args.update(
                s3_endpoint_url="https://minio.lab:9000",
                s3_access_key="minio",
                s3_secret_key=cfg.require_secret("minio"),
                service_account_role_arn=None,
            )
        server = TrackingServer("mlflow", TrackingServerArgs(**args))
        pulumi.export("url", server.url)

    return run_program(
        program,
        config={"platform:db": DB_URI, "platform:adm": ADMIN, "platform:minio": MINIO_SECRET},
        secret_keys=("platform:db", "platform:adm", "platform:minio"),
    )


def _container(result):
    (deployment,) = result.by_type("kubernetes:apps/v1:Deployment")
    return deployment.inputs["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("platform", ["aws", "onprem"])
def test_one_url_auth_on_and_artifacts_in_the_object_store(platform):
    result = _deploy(platform=platform)
    assert result.outputs["url"] == "https://mlflow.example.com"
    args = _container(result)["args"]
    assert args[args.index("--app-name") + 1] == "basic-auth"
    assert args[args.index("--artifacts-destination") + 1] == "s3://artifacts-bucket/mlflow"
    assert args[args.index("--backend-store-uri") + 1] == "$(MLFLOW_BACKEND_STORE_URI)"
    (ingress,) = result.by_type("kubernetes:networking.k8s.io/v1:Ingress")
    assert ingress.inputs["spec"]["tls"] == [{"hosts": ["mlflow.example.com"], "secretName": "mlflow-tls"}]


@pytest.mark.parametrize("platform", ["aws", "onprem"])
def test_no_plaintext_secret_in_inputs_or_outputs(platform):
    result = _deploy(platform=platform)
    for needle in ("db-pa55", ADMIN, MINIO_SECRET):
        assert plaintext_occurrences(result, needle) == [], needle
    (secret,) = result.by_type("kubernetes:core/v1:Secret")
    assert "admin_password = adm1n-pa55" in secret.inputs["stringData"]["basic_auth.ini"]
    env = {e["name"]: e for e in _container(result)["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-config"


def test_aws_reaches_the_bucket_through_irsa():
    result = _deploy()
    (account,) = result.by_type("kubernetes:core/v1:ServiceAccount")
    assert account.inputs["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mlflow"
    }
    assert "MLFLOW_S3_ENDPOINT_URL" not in {e["name"] for e in _container(result)["env"]}


def test_onprem_reaches_the_endpoint_with_secret_keys():
    env = {e["name"]: e for e in _container(_deploy(platform="onprem"))["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "https://minio.lab:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "AWS_SECRET_ACCESS_KEY"


def test_children_parented_and_tagged():
    result = _deploy()
    (server,) = result.by_type("hybridml:tracking:TrackingServer")
    custom = [r for r in result.resources if r.custom]
    assert len(custom) == 5 and all(r.parent == server.urn for r in custom)
    assert missing_tags(result, TAGS.as_tags()) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hostname": "https://x"}, "hostname: String should match pattern"),
        ({"s3_endpoint_url": "https://minio"}, "platform 'aws' reaches S3 through"),
        ({"replicas": 0}, "replicas: Input should be greater than or equal to 1"),
    ],
)
def test_bad_args_say_what_to_fix(overrides, message):
    with pytest.raises(ArgsError, match=message):
        _deploy(**overrides)


def test_onprem_without_endpoint_keys_is_refused():
    with pytest.raises(ArgsError, match="platform 'onprem' needs s3_endpoint_url"):
        TrackingServerArgs(
            platform="onprem",
            tags=TAGS,
            hostname="m.example.com",
            db_uri="x",
            admin_password="y",
            artifact_bucket="b",
        )
