"""GpuNodePool: GPU capacity that training jobs can be scheduled on, in the cloud or on-prem.

Why both forms share one component: the runner needs one thing from either — where GPU
jobs land and how to reach them. On AWS that is an EKS managed node group (for in-cluster
jobs) plus the EC2 launch template the runner's ``aws`` target launches VMs from. On-prem it
is labelled and tainted Kubernetes nodes with NVIDIA's device plugin, plus the registered
inventory of SSH GPU hosts the runner's ``ssh`` target uses. Both taint GPU nodes
``nvidia.com/gpu=true:NoSchedule`` so that only GPU jobs, which tolerate it, land there.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from pydantic import Field, field_validator, model_validator

from components.base import Args, OrgTags, Platform, PlatformComponent
from components.inventory import GpuHost
from hmlkit.gpu_catalog import families, family_of, is_gpu_instance_type
from hmlkit.ssh.hosts import SshHost

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true"}
GPU_AMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
)
RUNNER_POLICIES = ("AmazonSSMManagedInstanceCore", "CloudWatchAgentServerPolicy")
"""Runner VMs: Session Manager access, and the CloudWatch agent for GPU metrics."""
NODE_POLICIES = (
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
    *RUNNER_POLICIES,
)
DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin"
LAUNCHABLE_FAMILIES = families(vendor="nvidia", arch="x86_64")
"""What the NVIDIA x86_64 AMIs above can boot: AMD (g4ad) and Graviton (g5g) GPUs cannot."""


class AwsCapacity(Args):
    """Which EC2 capacity a pool buys (shared with the stack config's ``aws.pools``)."""

    instance_types: list[str] = Field(min_length=1)
    capacity: Literal["spot", "on_demand"] = "on_demand"
    ami_id: str | None = None
    """The runner VMs' AMI; default: AWS's Deep Learning AMI (NVIDIA driver, AL2023)."""
    ssh_ingress_cidrs: list[str] = Field(default_factory=list)
    """Who may SSH to runner VMs (e.g. the VPN range); never the whole internet."""

    @field_validator("instance_types")
    @classmethod
    def _gpu_types(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if not (is_gpu_instance_type(t) and family_of(t) in LAUNCHABLE_FAMILIES)]
        if bad:
            raise ValueError(
                f"{bad} are not GPU instance types this pool can launch (NVIDIA "
                f"GPUs on x86_64); use a type of {', '.join(LAUNCHABLE_FAMILIES)}"
                ", such as g5.xlarge"
            )
        return value

    @field_validator("ssh_ingress_cidrs")
    @classmethod
    def _not_open(cls, value: list[str]) -> list[str]:
        if any(c.endswith("/0") for c in value):
            raise ValueError("SSH from 0.0.0.0/0 (or ::/0) is not allowed; give the VPN or office CIDR")
        return value


class AwsPool(AwsCapacity):
    """Where the AWS form lives: an existing EKS cluster and VPC subnets."""

    cluster_name: str
    vpc_id: str
    subnet_ids: list[str] = Field(min_length=1)
    artifact_bucket_arn: str | pulumi.Output | None = None
    """Runner VMs get read/write on this bucket (checkpoints, artifacts)."""


class PoolSize(Args):
    """Autoscaling bounds (shared with the stack config's ``aws.pools``)."""

    min_size: int = Field(0, ge=0)
    max_size: int = Field(2, ge=1)
    desired_size: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> PoolSize:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError(
                f"need min_size <= desired_size <= max_size, got {self.min_size}"
                f" <= {self.desired_size} <= {self.max_size}"
            )
        return self


class AwsPoolSpec(AwsCapacity, PoolSize):
    """One AWS pool as the stack config gives it."""


class OnpremMachines(Args):
    """The GPU machines of an on-prem pool (shared with the stack config's ``onprem.pools``)."""

    nodes: list[str] = Field(default_factory=list)
    """Kubernetes node names with NVIDIA GPUs to label and taint."""
    hosts: list[SshHost] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> OnpremMachines:
        if not self.nodes and not self.hosts:
            raise ValueError("give at least one of nodes (Kubernetes GPU nodes) or hosts (SSH GPU hosts)")
        return self


class OnpremPool(OnpremMachines):
    """The on-prem form: cluster nodes with GPUs, and SSH GPU hosts outside the cluster."""

    known_hosts: str = "~/.hybridml/known_hosts"
    remote_root: str = "/var/lib/hybridml"
    device_plugin_version: str = "v0.17.0"
    namespace: str = "kube-system"


class GpuNodePoolArgs(PoolSize):
    platform: Platform
    tags: OrgTags
    labels: dict[str, str] = Field(default_factory=dict)
    aws: AwsPool | None = None
    onprem: OnpremPool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GpuNodePoolArgs:
        if getattr(self, self.platform) is None:
            raise ValueError(f"platform {self.platform!r} needs the {self.platform}= section")
        other = "onprem" if self.platform == "aws" else "aws"
        if getattr(self, other) is not None:
            raise ValueError(f"{other}= is set but platform is {self.platform!r}; remove it")
        return self


class GpuNodePool(PlatformComponent):
    """Outputs (AWS): ``node_group``, ``launch_template_id``, ``subnets``, ``instance_types``,
    ``instance_profile``. Outputs (on-prem): ``nodes``, ``hosts`` (profile entries)."""

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("hybridml:compute:GpuNodePool", name, opts)
        self.pool_labels = {**args.labels, "hybridml.io/gpu-pool": name}
        outputs = self._aws(args, args.aws) if args.aws else self._onprem(args, args.onprem)
        for key, value in outputs.items():
            setattr(self, key, value)
        self.register_outputs(outputs)

    def _aws(self, args: GpuNodePoolArgs, pool: AwsPool) -> dict[str, Any]:
        tags = args.tags.as_tags()
        node_role, attachments = self._role("node-role", NODE_POLICIES, tags)
        node_group = aws.eks.NodeGroup(
            self.child_name("nodes"),
            cluster_name=pool.cluster_name,
            node_role_arn=node_role.arn,
            subnet_ids=pool.subnet_ids,
            ami_type="AL2023_x86_64_NVIDIA",
            instance_types=pool.instance_types,
            capacity_type=pool.capacity.upper(),
            scaling_config={
                "min_size": args.min_size,
                "max_size": args.max_size,
                "desired_size": args.desired_size,
            },
            labels=self.pool_labels,
            taints=[{**GPU_TAINT, "effect": "NO_SCHEDULE"}],
            tags=tags,
            opts=self.child_opts(depends_on=attachments, ignore_changes=["scalingConfig.desiredSize"]),
        )
        runner_role, _ = self._role("runner-role", RUNNER_POLICIES, tags)
        if pool.artifact_bucket_arn is not None:
            aws.iam.RolePolicy(
                self.child_name("runner-artifacts"),
                role=runner_role.id,
                policy=pulumi.Output.from_input(pool.artifact_bucket_arn).apply(_bucket_rw),
                opts=self.child_opts(),
            )
        profile = aws.iam.InstanceProfile(
            self.child_name("runner-profile"), role=runner_role.name, tags=tags, opts=self.child_opts()
        )
        group = aws.ec2.SecurityGroup(
            self.child_name("sg"),
            vpc_id=pool.vpc_id,
            tags=tags,
            description="hybridml GPU runners: SSH from listed ranges, peers for torchrun",
            opts=self.child_opts(),
        )
        aws.vpc.SecurityGroupIngressRule(
            self.child_name("peers"),
            security_group_id=group.id,
            ip_protocol="-1",
            referenced_security_group_id=group.id,
            tags=tags,
            opts=self.child_opts(),
        )
        for i, cidr in enumerate(pool.ssh_ingress_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                self.child_name(f"ssh-{i}"),
                security_group_id=group.id,
                ip_protocol="tcp",
                from_port=22,
                to_port=22,
                cidr_ipv4=cidr,
                tags=tags,
                opts=self.child_opts(),
            )
        aws.vpc.SecurityGroupEgressRule(
            self.child_name("https-out"),
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4="0.0.0.0/0",
            tags=tags,
            opts=self.child_opts(),
        )
        image = (
            pool.ami_id
            or aws.ssm.get_parameter_output(
                name=GPU_AMI_PARAMETER, opts=pulumi.InvokeOutputOptions(parent=self)
            ).value
        )
        template = aws.ec2.LaunchTemplate(
            self.child_name("runner-lt"),
            image_id=image,
            iam_instance_profile={"arn": profile.arn},
            vpc_security_group_ids=[group.id],
            metadata_options={"http_tokens": "required", "http_endpoint": "enabled"},
            block_device_mappings=[
                {
                    "device_name": "/dev/xvda",
                    "ebs": {
                        "volume_size": 200,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            tag_specifications=[
                {"resource_type": kind, "tags": {**tags, **self.pool_labels}}
                for kind in ("instance", "volume")
            ],
            update_default_version=True,
            tags=tags,
            opts=self.child_opts(),
        )
        return {
            "node_group": node_group.node_group_name,
            "launch_template_id": template.id,
            "subnets": pool.subnet_ids,
            "instance_types": pool.instance_types,
            "instance_profile": profile.arn,
            "security_group": group.id,
        }

    def _role(
        self, role: str, policies: tuple[str, ...], tags: dict[str, str]
    ) -> tuple[aws.iam.Role, list[aws.iam.RolePolicyAttachment]]:
        """An EC2 instance role with AWS-managed ``policies`` attached."""
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        iam_role = aws.iam.Role(
            self.child_name(role), assume_role_policy=json.dumps(trust), tags=tags, opts=self.child_opts()
        )
        attachments = [
            aws.iam.RolePolicyAttachment(
                self.child_name(f"{role}-{policy.lower().replace('_', '-')}"),
                role=iam_role.name,
                policy_arn=f"arn:aws:iam::aws:policy/{policy}",
                opts=self.child_opts(),
            )
            for policy in policies
        ]
        return iam_role, attachments

    def _onprem(self, args: GpuNodePoolArgs, pool: OnpremPool) -> dict[str, Any]:
        labels = {**args.tags.as_tags(), **self.pool_labels}
        for node in pool.nodes:
            k8s.core.v1.NodePatch(
                self.child_name(f"node-{node}"),
                metadata={
                    "name": node,
                    "labels": {**labels, "nvidia.com/gpu.present": "true"},
                    "annotations": {"pulumi.com/patchForce": "true"},
                },
                spec={"taints": [{**GPU_TAINT, "effect": "NoSchedule"}]},
                opts=self.child_opts(),
            )
        if pool.nodes:
            self._device_plugin(pool, labels)
        hosts = [
            GpuHost(
                self.child_name(f"host-{h.address}-{h.port}"),
                h,
                known_hosts=pool.known_hosts,
                remote_root=pool.remote_root,
                opts=self.child_opts(),
            )
            for h in pool.hosts
        ]
        return {"nodes": pool.nodes, "hosts": pulumi.Output.all(*[h.profile_entry() for h in hosts])}

    def _device_plugin(self, pool: OnpremPool, labels: dict[str, str]) -> None:
        selector = {
            "app.kubernetes.io/name": "nvidia-device-plugin",
            "hybridml.io/gpu-pool": self.pool_labels["hybridml.io/gpu-pool"],
        }
        k8s.apps.v1.DaemonSet(
            self.child_name("device-plugin"),
            metadata={"namespace": pool.namespace, "labels": {**labels, **selector}},
            spec={
                "selector": {"match_labels": selector},
                "update_strategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": {**labels, **selector}},
                    "spec": {
                        "priority_class_name": "system-node-critical",
                        "node_selector": {"hybridml.io/gpu-pool": self.pool_labels["hybridml.io/gpu-pool"]},
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "containers": [
                            {
                                "name": "nvidia-device-plugin",
                                "image": f"{DEVICE_PLUGIN_IMAGE}:{pool.device_plugin_version}",
                                "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
                                "security_context": {
                                    "allow_privilege_escalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volume_mounts": [
                                    {"name": "device-plugin", "mount_path": "/var/lib/kubelet/device-plugins"}
                                ],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "device-plugin",
                                "host_path": {"path": "/var/lib/kubelet/device-plugins"},
                            }
                        ],
                    },
                },
            },
            opts=self.child_opts(),
        )


def _bucket_rw(bucket_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn},
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                    "Resource": f"{bucket_arn}/*",
                },
            ],
        }
    )
