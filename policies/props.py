"""Reading resource inputs the way both the engine and the offline evaluator hand them over.

Under ``pulumi preview`` the policy SDK gives rules read-only ``Mapping``/``Sequence`` proxies
(not ``dict``/``list``) whose unknown values raise ``UnknownValueError`` on access; offline we
hand over plain containers and wrap Pulumi secrets in ``pulumi_policy.Secret``. Every rule reads
inputs through these helpers so that it behaves the same on both paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pulumi_policy import Secret
from pulumi_policy.proxy import UnknownValueError

from hmlkit.gpu_catalog import is_gpu_instance_type

#: The organisation's tag keys, on every taggable AWS resource and as labels on Kubernetes objects.
REQUIRED_TAGS = ("team", "cost-center", "environment")

GPU_RESOURCE = "nvidia.com/gpu"
PRODUCTION_NAMES = frozenset({"prod", "production"})


def unwrap(value: Any) -> Any:
    """The plain value of a (possibly) Pulumi-secret input."""
    return value.value if isinstance(value, Secret) else value


def is_map(value: Any) -> bool:
    return isinstance(unwrap(value), Mapping)


def is_list(value: Any) -> bool:
    value = unwrap(value)
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def dig(value: Any, *path: str, default: Any = None) -> Any:
    """Follow ``path`` through nested maps; ``default`` where any step is missing."""
    for step in path:
        value = unwrap(value)
        if not is_map(value) or step not in value:
            return default
        value = value[step]
    value = unwrap(value)
    return default if value is None else value


def number(value: Any) -> int | float | None:
    """A numeric input as a number: numeric text counts (providers coerce it), else None."""
    value = unwrap(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    return value if isinstance(value, int) else None


def items(value: Any) -> list[Any]:
    """A list input as a list (a single object counts as a one-element list; absent is empty)."""
    value = unwrap(value)
    if value is None:
        return []
    return [unwrap(v) for v in value] if is_list(value) else [value]


def strings(value: Any) -> list[str]:
    return [str(v) for v in items(value)]


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any, bool]]:
    """Every scalar leaf as ``(dotted path, value, is_secret)``; a secret marks its whole subtree.

    Values unknown until apply are skipped: they are no literal written in the program.
    """
    secret = isinstance(value, Secret)
    value = unwrap(value)
    if is_map(value):
        steps = [(key, f"{path}.{key}" if path else str(key)) for key in value]
    elif is_list(value):
        steps = [(index, f"{path}[{index}]") for index in range(len(value))]
    else:
        yield path, value, secret
        return
    for step, sub_path in steps:
        try:
            child = value[step]
        except UnknownValueError:
            continue
        for leaf_path, leaf, leaf_secret in walk(child, sub_path):
            yield leaf_path, leaf, secret or leaf_secret


def policy_statements(document: Any) -> list[Mapping[str, Any]]:
    """The statements of an IAM policy document given as JSON text or as an object.

    Text that is not JSON yields nothing: the provider rejects it before any cloud call, and a
    value computed at apply time is not visible to any rule.
    """
    document = unwrap(document)
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            return []
    return [s for s in items(dig(document, "Statement")) if is_map(s)]


def provider_setting(resource: Any, key: str) -> Any:
    """A setting of a ``PolicyResource``'s provider, decoded from the JSON text the engine
    uses for structured provider settings (``endpoints``, ``defaultTags``)."""
    provider = resource.provider
    value = unwrap(dig(provider.props if provider else {}, key))
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def tags_of(props: Mapping[str, Any]) -> Mapping[str, Any]:
    tags = dig(props, "tags", default={})
    return tags if is_map(tags) else {}


def labels_of(props: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = dig(props, "metadata", "labels", default={})
    return labels if is_map(labels) else {}


def environment_of(props: Mapping[str, Any]) -> str:
    """The ``environment`` tag or label, lower-cased ("" when absent)."""
    value = tags_of(props).get("environment") or labels_of(props).get("environment") or ""
    return str(unwrap(value)).lower()


def is_production(props: Mapping[str, Any]) -> bool:
    return environment_of(props) in PRODUCTION_NAMES


def is_gpu_node_group(props: Mapping[str, Any]) -> bool:
    """An EKS node group is a GPU pool if its AMI type is a GPU one or any instance type is."""
    ami_type = str(dig(props, "amiType", default="")).upper()
    if "GPU" in ami_type or "NVIDIA" in ami_type:
        return True
    return any(is_gpu_instance_type(t) for t in strings(dig(props, "instanceTypes")))


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec of a Kubernetes workload, whatever its kind ({} for other resources)."""
    kind = resource_type.rsplit(":", 1)[-1]
    if kind in ("Pod", "PodPatch"):
        spec = dig(props, "spec")
    elif kind in ("CronJob", "CronJobPatch"):
        spec = dig(props, "spec", "jobTemplate", "spec", "template", "spec")
    else:
        spec = dig(props, "spec", "template", "spec")
    return spec if is_map(spec) and resource_type.startswith("kubernetes:") else {}


def containers(resource_type: str, props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = pod_spec(resource_type, props)
    found = items(dig(spec, "containers")) + items(dig(spec, "initContainers"))
    return [c for c in found if is_map(c)]
