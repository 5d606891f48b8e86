"""The aws scenarios as an IAM user that holds only the documented runner policy.

docs/aws-runner-policy.json is the one statement of what the runner's AWS principal needs.
Here a moto server of its own enforces IAM (tests/awsbed.py: the bed and the test act as an
admin, ``hml`` as a user holding only that policy) and logs every decision
(tests/motoserver.py): the scenarios must pass, nothing the runner asks may be denied, and
every action the policy grants must have been asked, so the policy is exactly what the runner
calls. Its own server, module-scoped: the other aws tests keep their unauthenticated one.

moto's IAM differs from AWS's in four ways, and the test speaks moto's dialect only there:

- moto names an action by the API's signing name and operation: CloudWatch signs as
  ``monitoring``, and Budgets' DescribeBudget is what IAM calls ``budgets:ViewBudget``;
- moto resolves resource ARNs for S3 only and checks any other action against ``*``;
- moto refuses every statement with a ``Condition`` (it has no condition context), so the
  conditions are dropped; what they require of the runner's requests is asserted instead
  (instances tagged ``hml:managed``, metrics in the ``HybridML`` namespace);
- moto checks the called action only: ``ec2:CreateTags`` (RunInstances' TagSpecifications)
  and ``iam:PassRole`` (the launch template's instance role) are never asked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.awsbed import REGION, AwsBed, running_aws_bed, wait_gone
from tests.runners.helpers import hml, submit_json, write_job

POLICY = Path(__file__).parents[2] / "docs" / "aws-runner-policy.json"
BUCKET = "hml-iam-datasets"
MOTO_NAMES = {
    "cloudwatch:PutMetricData": "monitoring:PutMetricData",
    "budgets:ViewBudget": "budgets:DescribeBudget",
}
NOT_ASKED_BY_MOTO = {"ec2:CreateTags", "iam:PassRole"}
NO_PERMISSION_NEEDED = {"sts:GetCallerIdentity"}
"""AWS answers it for any principal; the budget check asks it for the account id."""


def policy_in_motos_dialect(policy: dict[str, Any]) -> dict[str, Any]:
    statements = []
    for st in policy["Statement"]:
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        statements.append(
            {
                "Effect": st["Effect"],
                "Action": [MOTO_NAMES.get(a, a) for a in st["Action"]],
                "Resource": [
                    r.replace("<dataset-bucket>", BUCKET) if r.startswith("arn:aws:s3:::") else "*"
                    for r in resources
                ],
            }
        )
    return {"Version": policy["Version"], "Statement": statements}


@pytest.fixture(scope="module")
def iam_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsBed]:
    policy = json.loads(POLICY.read_text())
    with running_aws_bed(
        tmp_path_factory.mktemp("iambed"), iam_policy=policy_in_motos_dialect(policy)
    ) as bed:
        yield bed


def test_the_policy_file_has_no_placeholder_left_unexplained():
    text = POLICY.read_text()
    placeholders = set(re.findall(r"<[a-z-]+>", text))
    assert placeholders == {
        "<account-id>",
        "<instance-role>",
        "<budget-name>",
        "<region>",
        "<vault-prefix>",
        "<dataset-bucket>",
    }
    runner_doc = (Path(__file__).parents[2] / "docs" / "runner.md").read_text()
    assert "aws-runner-policy.json" in runner_doc and all(p in runner_doc for p in placeholders)


def test_the_aws_scenarios_need_exactly_the_documented_policy(tmp_path, iam_bed, mlflow_server):
    import boto3

    bed = iam_bed
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=bed.endpoint)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=BUCKET, Key="digits/a.txt", Body=b"alpha\n")
    secrets = boto3.client("secretsmanager", region_name=REGION, endpoint_url=bed.endpoint)
    secrets.create_secret(Name="hml/TOKEN", SecretString="token-from-the-vault")
    account = boto3.client("sts", region_name=REGION, endpoint_url=bed.endpoint).get_caller_identity()
    boto3.client("budgets", region_name="us-east-1", endpoint_url=bed.endpoint).create_budget(
        AccountId=account["Account"],
        Budget={"BudgetName": "ml-team", "BudgetLimit": {"Amount": "500", "Unit": "USD"},
                "TimeUnit": "MONTHLY", "BudgetType": "COST"},
    )  # fmt: skip
    profile = tmp_path / "hybridml.yaml"
    target = bed.target(budget="ml-team", telemetry={"team": "ml", "cloudwatch": {"region": REGION}})
    profile.write_text(
        yaml.safe_dump(
            {
                "tracking_uri": mlflow_server.url,
                "vault": {"kind": "aws", "prefix": "hml/", "region": REGION},
                "stores": {"lake": {"region": REGION, "buckets": [BUCKET]}},
                "targets": {"cloud": target},
            }
        )
    )
    runner = {**bed.runner_env, "HML_CONFIG": str(profile)}

    snap = hml("data", "snapshot", "digits", f"s3://{BUCKET}/digits", "-o", "json", env=runner)
    assert snap.returncode == 0, snap.stderr
    shown = hml("data", "show", "digits@v1", "-o", "json", env=runner)
    assert shown.returncode == 0 and json.loads(shown.stdout)["ref"] == "digits@v1", shown.stderr

    job = write_job(tmp_path / "w", run='test "${#TOKEN}" = 20 && echo on-the-instance',
                    secrets=["TOKEN"], max_runtime="1h")  # fmt: skip
    summary, out = submit_json(str(job), "--target", "cloud", env=runner)
    assert out.returncode == 0 and summary["status"] == "FINISHED", (summary, out.stderr)
    logs = hml("logs", summary["run_id"], env=runner).stdout
    assert "on-the-instance" in logs and "telemetry not sent" not in logs, logs
    assert wait_gone(bed) == [], "an instance hml launched is still running"

    # what the dropped conditions require of the runner's requests
    (inst,) = bed.instances(summary["run_id"], states=("shutting-down", "terminated"))
    assert {"Key": "hml:managed", "Value": "true"} in inst["Tags"]
    data = bed.user_data[inst["InstanceId"]]  # readable by any principal: no secret in it
    assert "token-from-the-vault" not in data and bed.runner_env["AWS_SECRET_ACCESS_KEY"] not in data
    cloudwatch = boto3.client("cloudwatch", region_name=REGION, endpoint_url=bed.endpoint)
    assert "JobsFailed" in {m["MetricName"] for m in cloudwatch.list_metrics(Namespace="HybridML")["Metrics"]}

    key = bed.runner_env["AWS_ACCESS_KEY_ID"]
    decisions = [json.loads(line) for line in (bed.root / "iam-actions.jsonl").read_text().splitlines()]
    mine = [d for d in decisions if d["key"] == key]
    assert [d for d in mine if "denied" in d] == []
    asked = {d["action"] for d in mine} - NO_PERMISSION_NEEDED
    policy = json.loads(POLICY.read_text())
    granted = {a for st in policy["Statement"] for a in st["Action"]} - NOT_ASKED_BY_MOTO
    assert asked == {MOTO_NAMES.get(a, a) for a in granted}
