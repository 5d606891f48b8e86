"""Bad stack config fails before any resource is planned, naming the key and the fix."""

from __future__ import annotations

import pytest

from components.platform_config import StackConfigError
from policies.offline import load_stack_config, run_project
from tests.stacks.examples import PROJECT


def _storage(**changes):
    storage = load_stack_config(PROJECT, "aws-dev").values["platform:storage"]
    return {**storage, **changes}


def _aws(**changes):
    aws = load_stack_config(PROJECT, "aws-dev").values["platform:aws"]
    return {**aws, **changes}


@pytest.mark.parametrize(
    "config, expected",
    [
        (
            {"platform:budget": {"monthly_usd": 0, "notify": ["a@example.com"]}},
            "platform:budget.monthly_usd: Input should be greater than 0; set it with: "
            "pulumi config set --path 'platform:budget.monthly_usd' <value>",
        ),
        (
            {"platform:budjet": {"monthly_usd": 5}},
            "platform:budjet: unknown key; known keys: aws, budget, default_target",
        ),
        (
            {"platform:tracking": {"cluster": "gcp", "hostname": "m.example.com"}},
            "platform:tracking.cluster: Input should be 'aws' or 'onprem'",
        ),
        (
            {"aws:region": None},
            "aws:region: required with platform:aws; set it with: pulumi config set aws:region",
        ),
        ({"platform:org": None}, "platform:org: required field is missing; set it with"),
        ({"platform:default_target": "gpu-cloud"}, "default_target: 'gpu-cloud' is not one of local, aws"),
        (
            {"platform:storage": _storage(artifact_bucket="models")},
            "platform:storage: artifact_bucket 'models' is not one of the buckets",
        ),
        ({"platform:storage": _storage(extra=1)}, "platform:storage.extra: unknown field"),
        (
            {"platform:aws": _aws(pools={"aws": {"instance_types": ["m5.large"]}})},
            "platform:aws.pools.aws.instance_types: ['m5.large'] are not GPU instance types",
        ),
        (
            {
                "platform:aws": _aws(
                    pools={"aws": {"instance_types": ["g5.xlarge"], "ssh_ingress_cidrs": ["0.0.0.0/0"]}}
                )
            },
            "ssh_ingress_cidrs: SSH from 0.0.0.0/0 (or ::/0) is not allowed",
        ),
        ({"platform:vault": None}, "vault.readers: required with platform:aws"),
        (
            {"platform:storage": _storage(buckets={"artifacts": {"platform": "onprem"}})},
            "platform: onprem: required, because a bucket or the tracking server is on 'onprem'",
        ),
        (
            {"platform:org": {"team": "ML Platform", "cost_center": "c", "environment": "dev"}},
            "platform:org.team: 'ML Platform' must be 1-63 letters",
        ),
        (
            {"platform:storage": _storage(retention={"legal_minimum_days": {"eu-west-1": 3650}})},
            "platform: storage.buckets.datasets: retention.delete_after_days: 1095 is shorter than "
            "the legal minimum of 3650 days in eu-west-1",
        ),
    ],
)
def test_bad_config_names_the_key_and_the_fix(config, expected):
    with pytest.raises(StackConfigError) as info:
        run_project(PROJECT, "aws-dev", config=config)
    assert expected in str(info.value)


def _onprem(**changes):
    onprem = load_stack_config(PROJECT, "onprem").values["platform:onprem"]
    return {**onprem, **changes}


def _hpc(**changes):
    return _onprem(slurm={"hpc": {**_onprem()["slurm"]["hpc"], **changes}})


@pytest.mark.parametrize(
    "onprem, expected",
    [
        (
            _hpc(account="ml team"),
            "platform:onprem.slurm.hpc.account: 'ml team': one word without spaces or quotes",
        ),
        (_hpc(remote_root=None), "platform:onprem.slurm.hpc.remote_root: Input should be a valid string"),
        (
            _onprem(slurm={"hpc": {"login": {"address": "login"}, "remote_root": "/shared"}}),
            "platform:onprem.slurm.hpc.login.user: required field is missing; set it with: "
            "pulumi config set --path 'platform:onprem.slurm.hpc.login.user' <value>",
        ),
        (_hpc(partition_name="gpu"), "platform:onprem.slurm.hpc.partition_name: unknown field"),
        (_hpc(gres_name="gpu:a100"), "platform:onprem.slurm.hpc.gres_name: String should match pattern"),
        (_hpc(gpu_hour_usd=-1), "platform:onprem.slurm.hpc.gpu_hour_usd: Input should be greater than"),
        (
            _onprem(slurm={"onprem": _onprem()["slurm"]["hpc"]}),
            "platform: onprem.slurm: cluster names are target names and must differ from local and "
            "the pools' names; rename ['onprem']",
        ),
    ],
)
def test_bad_slurm_cluster_names_the_field(onprem, expected):
    with pytest.raises(StackConfigError) as info:
        run_project(PROJECT, "onprem", config={"platform:onprem": onprem})
    assert expected in str(info.value)


def test_missing_secret_says_how_to_set_it_as_a_secret():
    with pytest.raises(StackConfigError) as info:
        run_project(PROJECT, "onprem", config={"platform:s3SecretKey": None})
    assert "platform:s3SecretKey: the on-prem S3 endpoint's secret key" in str(info.value)
    assert "pulumi config set --secret platform:s3SecretKey <value>" in str(info.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(StackConfigError) as info:
        run_project(PROJECT, "aws-dev", config={"platform:budjet": 1, "platform:budget": None})
    message = str(info.value)
    assert "platform:budjet: unknown key" in message
    assert "platform:budget: required field is missing" in message


def test_plain_string_keys_are_read_as_strings():
    result = run_project(PROJECT, "onprem", config={"platform:namespace": "ml-platform"})
    (namespace,) = result.by_type("kubernetes:core/v1:Namespace")
    assert namespace.inputs["metadata"]["name"] == "ml-platform"
    (server,) = result.by_type("kubernetes:apps/v1:Deployment")
    assert server.inputs["metadata"]["namespace"] == "ml-platform"


def test_a_section_that_is_not_a_map_says_so():
    with pytest.raises(StackConfigError, match="platform:budget: must be a map"):
        run_project(PROJECT, "onprem", config={"platform:budget": "lots"})


def test_the_bed_switches_leave_out_the_aws_provider_and_the_ingress_wait():
    """``storage.create_buckets: false``: no bucket and no AWS provider (the Kubernetes bed's
    engine has none), the names as given; ``tracking.await_ingress: false`` and ``tracking_uri``."""
    storage = {**_onprem_config("platform:storage"), "create_buckets": False}
    tracking = {
        **_onprem_config("platform:tracking"),
        "await_ingress": False,
        "tracking_uri": "http://mlflow.internal:5000",
    }
    result = run_project(
        PROJECT, "onprem", config={"platform:storage": storage, "platform:tracking": tracking}
    )
    assert not [r for r in result.resources if r.type.startswith(("aws:", "pulumi:providers:aws"))]
    assert result.outputs["buckets"] == {"datasets": "datasets", "artifacts": "artifacts"}
    profile = result.outputs["runnerProfile"]
    assert profile["tracking_uri"] == "http://mlflow.internal:5000"
    assert profile["stores"]["onprem"]["buckets"] == ["datasets"]
    (ingress,) = result.by_type("kubernetes:networking.k8s.io/v1:Ingress")
    assert ingress.inputs["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}
    (server,) = result.by_type("kubernetes:apps/v1:Deployment")
    assert "s3://artifacts/mlflow" in server.inputs["spec"]["template"]["spec"]["containers"][0]["args"]
    default = run_project(PROJECT, "onprem")
    (ingress,) = default.by_type("kubernetes:networking.k8s.io/v1:Ingress")
    assert "annotations" not in ingress.inputs["metadata"]  # a real cluster's controller: waited for
    assert default.by_type("aws:s3/bucket:Bucket")


def _onprem_config(key):
    return load_stack_config(PROJECT, "onprem").values[key]
