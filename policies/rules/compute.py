"""GPU capacity and network rules: bounded, tainted, cost-aware node pools; closed ingress.

GPU capacity is recognised by type, not by who declared it: EKS node groups with a GPU AMI
type or GPU instance types, EC2 launch templates and instances whose family is in
``hmlkit.gpu_catalog`` (the table the GPU pool validates against too), and Kubernetes nodes
labelled with an NVIDIA GPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pulumi_policy import EnforcementLevel, Severity

from hmlkit.gpu_catalog import GPU_FAMILIES, family_of, is_gpu_instance_type
from policies.props import (
    GPU_RESOURCE,
    dig,
    is_gpu_node_group,
    is_production,
    items,
    labels_of,
    number,
    strings,
)
from policies.registry import resource_rule

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
SPOT_REQUEST = "aws:ec2/spotInstanceRequest:SpotInstanceRequest"
K8S_NODES = frozenset({"kubernetes:core/v1:Node", "kubernetes:core/v1:NodePatch"})
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
SG_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
WORLD = frozenset({"0.0.0.0/0", "::/0"})


def gpu_instance_types(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """The GPU instance types an EC2-backed resource launches (empty: not GPU capacity)."""
    if resource_type == NODE_GROUP:
        return strings(dig(props, "instanceTypes")) if is_gpu_node_group(props) else []
    if resource_type in (LAUNCH_TEMPLATE, INSTANCE, SPOT_REQUEST):
        instance_type = dig(props, "instanceType")
        return [instance_type] if is_gpu_instance_type(instance_type) else []
    return []


def is_gpu_k8s_node(props: Mapping[str, Any]) -> bool:
    return any(str(key).startswith(GPU_RESOURCE) for key in labels_of(props))


def is_gpu_capacity(resource_type: str, props: Mapping[str, Any]) -> bool:
    if resource_type == NODE_GROUP:
        return is_gpu_node_group(props)
    if resource_type in K8S_NODES:
        return is_gpu_k8s_node(props)
    return bool(gpu_instance_types(resource_type, props))


def _is_spot(resource_type: str, props: Mapping[str, Any]) -> bool:
    if resource_type == NODE_GROUP:
        return dig(props, "capacityType") == "SPOT"
    if resource_type == SPOT_REQUEST:
        return True
    return dig(props, "instanceMarketOptions", "marketType") == "spot"


_EC2_CAPACITY = frozenset({NODE_GROUP, LAUNCH_TEMPLATE, INSTANCE, SPOT_REQUEST})


@resource_rule(
    "gpu-nodepool-max-size",
    description="GPU node groups have an upper bound on their size, so autoscaling cannot run "
    "up an unbounded bill.",
    severity=Severity.HIGH,
    remediation="Set scalingConfig.maxSize to at most maxNodes (GpuNodePool's max_nodes).",
    types={NODE_GROUP},
    config={"maxNodes": {"type": "integer", "default": 16}},
)
def gpu_nodepool_max_size(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    if not is_gpu_node_group(props):
        return
    maximum = number(dig(props, "scalingConfig", "maxSize"))
    if maximum is None:
        yield "scalingConfig.maxSize is not set to a number"
    elif maximum > config["maxNodes"]:
        yield f"scalingConfig.maxSize {maximum} exceeds the limit of {config['maxNodes']}"


@resource_rule(
    "gpu-spot-outside-production",
    description="GPU capacity outside production runs on spot, the cheaper capacity.",
    severity=Severity.MEDIUM,
    remediation="Set capacityType 'SPOT' on the node group, or instanceMarketOptions.marketType "
    "'spot' on the launch template, for every environment but production.",
    types=_EC2_CAPACITY,
)
def gpu_spot_outside_production(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    if is_gpu_capacity(resource_type, props) and not is_production(props):
        if not _is_spot(resource_type, props):
            yield "non-production GPU capacity is on-demand"


@resource_rule(
    "gpu-ondemand-in-production",
    description="Production GPU capacity is on-demand, so serving and deadlines survive spot interruptions.",
    severity=Severity.MEDIUM,
    remediation="Use capacityType 'ON_DEMAND' (or no instanceMarketOptions) where the "
    "environment tag is production.",
    types=_EC2_CAPACITY,
    enforcement=EnforcementLevel.ADVISORY,
)
def gpu_ondemand_in_production(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    if is_gpu_capacity(resource_type, props) and is_production(props):
        if _is_spot(resource_type, props):
            yield "production GPU capacity is on spot"


@resource_rule(
    "gpu-instance-types-allowed",
    description="GPU instances come from the approved (priced and budgeted) families only.",
    severity=Severity.MEDIUM,
    remediation="Pick an instance type from allowedFamilies, or add the family to the pack "
    "configuration after finance approves its price.",
    types=_EC2_CAPACITY,
    config={
        "allowedFamilies": {
            "type": "array",
            "items": {"type": "string", "enum": sorted(GPU_FAMILIES)},
            "default": ["g4dn", "g5", "g6", "g6e", "p3"],
        }
    },
)
def gpu_instance_types_allowed(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    for instance_type in gpu_instance_types(resource_type, props):
        if family_of(instance_type) not in config["allowedFamilies"]:
            yield f"instance type {instance_type} is not in an approved GPU family"


def _has_gpu_taint(taints: list[Any], effect: str) -> bool:
    return any(dig(t, "key") == GPU_RESOURCE and dig(t, "effect") == effect for t in taints)


@resource_rule(
    "gpu-nodes-tainted",
    description="GPU nodes carry the nvidia.com/gpu NoSchedule taint, so only pods that ask "
    "for a GPU land on them.",
    severity=Severity.HIGH,
    remediation="Add the taint key 'nvidia.com/gpu', effect NO_SCHEDULE (EKS) or NoSchedule "
    "(Kubernetes node spec.taints).",
    types={NODE_GROUP} | K8S_NODES,
)
def gpu_nodes_tainted(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    if resource_type == NODE_GROUP and is_gpu_node_group(props):
        if not _has_gpu_taint(items(dig(props, "taints")), "NO_SCHEDULE"):
            yield "GPU node group has no nvidia.com/gpu NO_SCHEDULE taint"
    elif resource_type in K8S_NODES and is_gpu_k8s_node(props):
        if not _has_gpu_taint(items(dig(props, "spec", "taints")), "NoSchedule"):
            yield "GPU node has no nvidia.com/gpu NoSchedule taint"


@dataclass(frozen=True)
class Ingress:
    """One ingress permission, whichever of the three security-group APIs declared it."""

    from_port: int
    to_port: int
    cidrs: list[str]

    def covers(self, port: int) -> bool:
        return self.from_port <= port <= self.to_port


def _ports(protocol: Any, from_port: Any, to_port: Any) -> tuple[int, int]:
    """The port range; all ports for protocol -1/all, or where a port is not a number."""
    low, high = number(from_port), number(to_port)
    if str(protocol) in ("-1", "all") or low is None:
        return 0, 65535
    return int(low), int(high if high is not None else low)


def ingress_rules(resource_type: str, props: Mapping[str, Any]) -> list[Ingress]:
    if resource_type == SG_INGRESS_RULE:
        # a CIDR is a string; anything else (a map from a malformed program) opens nothing to match
        cidrs = [c for c in (dig(props, "cidrIpv4"), dig(props, "cidrIpv6")) if isinstance(c, str) and c]
        return [
            Ingress(*_ports(dig(props, "ipProtocol"), dig(props, "fromPort"), dig(props, "toPort")), cidrs)
        ]
    if resource_type == SG_RULE:
        entries = [props] if dig(props, "type") == "ingress" else []
    else:
        entries = items(dig(props, "ingress"))
    return [
        Ingress(
            *_ports(dig(e, "protocol"), dig(e, "fromPort"), dig(e, "toPort")),
            strings(dig(e, "cidrBlocks")) + strings(dig(e, "ipv6CidrBlocks")),
        )
        for e in entries
    ]


_SG_TYPES = frozenset({SECURITY_GROUP, SG_RULE, SG_INGRESS_RULE})


@resource_rule(
    "sg-no-public-ssh",
    description="No security group opens SSH (port 22) to 0.0.0.0/0 or ::/0.",
    severity=Severity.CRITICAL,
    remediation="Allow port 22 only from the office/VPN CIDRs or a bastion's security group, "
    "or reach hosts through SSM Session Manager.",
    types=_SG_TYPES,
)
def sg_no_public_ssh(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    for rule in ingress_rules(resource_type, props):
        world = WORLD.intersection(rule.cidrs)
        if world and rule.covers(22):
            yield f"port 22 is open to {', '.join(sorted(world))}"


@resource_rule(
    "sg-public-ingress-restricted",
    description="Ingress from the whole internet is allowed only on the approved ports.",
    severity=Severity.HIGH,
    remediation="Restrict the CIDR to known networks, or serve through a load balancer on an approved port.",
    types=_SG_TYPES,
    config={"allowedPorts": {"type": "array", "items": {"type": "integer"}, "default": [443]}},
)
def sg_public_ingress_restricted(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    for rule in ingress_rules(resource_type, props):
        if not WORLD.intersection(rule.cidrs):
            continue
        allowed = [p for p in config["allowedPorts"] if rule.from_port == p == rule.to_port]
        if not allowed:
            yield f"ports {rule.from_port}-{rule.to_port} are open to the internet"


@resource_rule(
    "ec2-imdsv2-required",
    description="EC2 launch templates and instances require IMDSv2 session tokens, so a "
    "request-forgery bug cannot read the instance role's credentials.",
    severity=Severity.HIGH,
    remediation="Set metadataOptions.httpTokens to 'required'.",
    types={LAUNCH_TEMPLATE, INSTANCE},
)
def ec2_imdsv2_required(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    if dig(props, "metadataOptions", "httpTokens") != "required":
        yield "metadataOptions.httpTokens is not 'required'"
