"""GpuNodePool: AWS node group + runner launch template; on-prem nodes, device plugin, hosts."""

from __future__ import annotations

import json

import pulumi
import pytest

from components.base import ArgsError, OrgTags
from components.gpu_pool import GpuNodePool, GpuNodePoolArgs
from policies.offline import OfflineMocks, run_program
from tests.programs import missing_tags

TAGS = OrgTags(team="ml-platform", cost_center="cc-4711", environment="dev")
AWS_POOL = {
    "cluster_name": "ml-eks",
    "vpc_id": "vpc-1",
    "subnet_ids": ["subnet-a", "subnet-b"],
    "instance_types": ["g5.xlarge", "g5.2xlarge"],
    "capacity": "spot",
    "ssh_ingress_cidrs": ["10.8.0.0/16"],
    "artifact_bucket_arn": "arn:aws:s3:::artifacts",
}
ONPREM_POOL = {
    "nodes": ["gpu-node-1", "gpu-node-2"],
    "hosts": [
        {
            "address": "10.0.0.5",
            "user": "hml",
            "gpus": 4,
            "identity_file": "~/.ssh/id_ed25519",
            "labels": {"rack": "a"},
        },
        {"address": "10.0.0.6", "port": 2222, "user": "hml"},
    ],
}


#: The one SSM parameter AWS publishes the Deep Learning AMI (NVIDIA driver, AL2023) under.
DLAMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
)


class SsmParameters(OfflineMocks):
    """SSM holds only the Deep Learning AMI's parameter: any other name fails the lookup."""

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        if args.token == "aws:ssm/getParameter:getParameter":
            values = {DLAMI_PARAMETER: "ami-0dlami"}
            if args.args["name"] not in values:
                raise KeyError(f"ParameterNotFound: {args.args['name']}")
            return {"name": args.args["name"], "value": values[args.args["name"]], "type": "String"}
        return super().call(args)


def _deploy(**overrides):
    def program():
        args = {
            "platform": "aws",
            "tags": TAGS,
            "min_size": 0,
            "max_size": 4,
            "desired_size": 1,
            "aws": AWS_POOL,
            **overrides,
        }
        pool = GpuNodePool("gpu", GpuNodePoolArgs(**args))
        pulumi.export(
            "pool",
            {k: getattr(pool, k) for k in ("launch_template_id", "subnets")}
            if args["platform"] == "aws"
            else pool.hosts,
        )

    return run_program(program, mocks=SsmParameters())


def _onprem(**overrides):
    return _deploy(platform="onprem", aws=None, onprem=ONPREM_POOL, **overrides)


def test_aws_node_group_is_gpu_spot_tainted_and_scaled():
    result = _deploy()
    (group,) = result.by_type("aws:eks/nodeGroup:NodeGroup")
    inputs = group.inputs
    assert inputs["amiType"] == "AL2023_x86_64_NVIDIA"
    assert inputs["capacityType"] == "SPOT"
    assert inputs["instanceTypes"] == ["g5.xlarge", "g5.2xlarge"]
    assert inputs["scalingConfig"] == {"minSize": 0, "maxSize": 4, "desiredSize": 1}
    assert inputs["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert inputs["labels"] == {"hybridml.io/gpu-pool": "gpu"}
    assert group.options.ignore_changes == ("scalingConfig.desiredSize",)
    worker = [
        r.urn
        for r in result.by_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if r.inputs["policyArn"].endswith("AmazonEKSWorkerNodePolicy")
    ]
    assert set(worker) <= set(group.options.depends_on) and worker


def test_aws_launch_template_for_the_runner():
    result = _deploy()
    (template,) = result.by_type("aws:ec2/launchTemplate:LaunchTemplate")
    (profile,) = result.by_type("aws:iam/instanceProfile:InstanceProfile")
    (group,) = result.by_type("aws:ec2/securityGroup:SecurityGroup")
    inputs = template.inputs
    assert inputs["imageId"] == "ami-0dlami"  # looked up from the Deep Learning AMI parameter
    assert inputs["iamInstanceProfile"] == {"arn": profile.outputs["arn"]}
    assert inputs["vpcSecurityGroupIds"] == [group.id]
    assert inputs["metadataOptions"]["httpTokens"] == "required"
    assert inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"
    for spec in inputs["tagSpecifications"]:
        assert spec["tags"]["cost-center"] == "cc-4711"
    assert result.outputs["pool"] == {"launch_template_id": template.id, "subnets": ["subnet-a", "subnet-b"]}


def test_aws_runner_role_reaches_only_the_artifact_bucket():
    result = _deploy()
    (policy,) = result.by_type("aws:iam/rolePolicy:RolePolicy")
    resources = [s["Resource"] for s in json.loads(policy.inputs["policy"])["Statement"]]
    assert resources == ["arn:aws:s3:::artifacts", "arn:aws:s3:::artifacts/*"]


def test_aws_ssh_only_from_listed_ranges():
    result = _deploy()
    ingress = result.by_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    cidrs = [r.inputs.get("cidrIpv4") for r in ingress]
    assert sorted(c for c in cidrs if c) == ["10.8.0.0/16"]
    assert all(r.inputs.get("fromPort", 22) == 22 for r in ingress if r.inputs.get("cidrIpv4"))


def test_aws_explicit_ami_skips_the_lookup():
    result = _deploy(aws={**AWS_POOL, "ami_id": "ami-123"})
    (template,) = result.by_type("aws:ec2/launchTemplate:LaunchTemplate")
    assert template.inputs["imageId"] == "ami-123"


def test_onprem_nodes_are_labelled_and_tainted():
    result = _onprem()
    patches = result.by_type("kubernetes:core/v1:NodePatch")
    assert sorted(p.inputs["metadata"]["name"] for p in patches) == ["gpu-node-1", "gpu-node-2"]
    for patch in patches:
        assert patch.inputs["spec"]["taints"] == [
            {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
        ]
        assert patch.inputs["metadata"]["labels"]["hybridml.io/gpu-pool"] == "gpu"


def test_onprem_device_plugin_tolerates_the_taint_on_pool_nodes_only():
    result = _onprem()
    (plugin,) = result.by_type("kubernetes:apps/v1:DaemonSet")
    pod = plugin.inputs["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"hybridml.io/gpu-pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["containers"][0]["image"] == "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"
    selector = plugin.inputs["spec"]["selector"]["matchLabels"]
    assert selector.items() <= plugin.inputs["spec"]["template"]["metadata"]["labels"].items()


def test_onprem_hosts_are_registered_and_listed_for_the_runner():
    result = _onprem()
    hosts = {h.name: h.inputs for h in result.by_type("pulumi-python:dynamic:Resource")}
    assert sorted(hosts) == ["gpu-host-10.0.0.5-22", "gpu-host-10.0.0.6-2222"]
    first = hosts["gpu-host-10.0.0.5-22"]
    assert (first["known_hosts"], first["remote_root"]) == ("~/.hybridml/known_hosts", "/var/lib/hybridml")
    assert first["host"]["address"] == "10.0.0.5"
    # Until the first `up` probes them, a host lists its configured GPUs (or none).
    assert result.outputs["pool"] == [
        {
            "address": "10.0.0.5",
            "port": 22,
            "user": "hml",
            "identity_file": "~/.ssh/id_ed25519",
            "gpus": 4,
            "labels": {"rack": "a"},
            "python": "python3",
        },
        {"address": "10.0.0.6", "port": 2222, "user": "hml", "labels": {}, "python": "python3"},
    ]


@pytest.mark.parametrize("run", [_deploy, _onprem])
def test_children_parented_and_tagged(run):
    result = run()
    (pool,) = result.by_type("hybridml:compute:GpuNodePool")
    custom = [r for r in result.resources if r.custom]
    assert custom and all(r.parent == pool.urn and r.name.startswith("gpu-") for r in custom)
    assert missing_tags(result, TAGS.as_tags()) == []


def test_aws_large_gpu_families_are_launchable():
    result = _deploy(aws={**AWS_POOL, "instance_types": ["p4d.24xlarge", "p5.48xlarge"]})
    (group,) = result.by_type("aws:eks/nodeGroup:NodeGroup")
    assert group.inputs["instanceTypes"] == ["p4d.24xlarge", "p5.48xlarge"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"aws": {**AWS_POOL, "instance_types": ["m5.large"]}}, r"\['m5.large'\] are not GPU instance types"),
        (
            {"aws": {**AWS_POOL, "instance_types": ["g5.xlarge", "g5g.xlarge", "g4ad.xlarge"]}},
            r"\['g5g.xlarge', 'g4ad.xlarge'\] are not GPU instance types this pool can launch "
            r"\(NVIDIA GPUs on x86_64\); use a type of g4dn, g5, g6",
        ),
        ({"aws": {**AWS_POOL, "ssh_ingress_cidrs": ["0.0.0.0/0"]}}, "is not allowed"),
        ({"aws": {**AWS_POOL, "capacity": "reserved"}}, "Input should be 'spot' or 'on_demand'"),
        ({"min_size": 3, "desired_size": 1}, "min_size <= desired_size <= max_size"),
        ({"aws": None}, "platform 'aws' needs the aws= section"),
        ({"onprem": {"nodes": ["n"]}}, "onprem= is set but platform is 'aws'"),
        ({"platform": "onprem", "aws": None, "onprem": {}}, "at least one of nodes"),
    ],
)
def test_bad_args_say_what_to_fix(overrides, message):
    with pytest.raises(ArgsError, match=message):
        _deploy(**overrides)
