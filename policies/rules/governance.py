"""Cost and ownership rules: the organisation's tags, budgets wherever GPUs are, MLflow auth.

Whether a resource takes tags (AWS) or labels (Kubernetes) is the pack's own answer
(``policies.taggable``, read from the provider SDKs installed with the pack), and it fails
closed: a type the SDK does not know is held to the tags like any taggable one. Tags set on
the provider (``defaultTags``) count, as the provider merges them into every resource.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pulumi_policy import PolicyResource, Severity

from policies.props import (
    REQUIRED_TAGS,
    containers,
    dig,
    is_map,
    items,
    labels_of,
    provider_setting,
    strings,
    tags_of,
    unwrap,
)
from policies.registry import resource_rule, stack_rule
from policies.rules.compute import is_gpu_capacity
from policies.taggable import tag_carrier

BUDGET = "aws:budgets/budget:Budget"
PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
DEVICE_PLUGIN_IMAGE = "k8s-device-plugin"


def _provider_default_tags(resource: PolicyResource) -> Mapping[str, Any]:
    tags = dig(provider_setting(resource, "defaultTags"), "tags", default={})
    return tags if is_map(tags) else {}


@stack_rule(
    "required-tags",
    description="Every taggable AWS resource carries the organisation's tags, and every "
    "Kubernetes object the same keys as labels, so cost and ownership are attributable.",
    severity=Severity.MEDIUM,
    remediation="Pass the organisation's tags (team, cost-center, environment) to the resource "
    "(components do this from stack config) or set them as the aws provider's defaultTags; "
    "on Kubernetes set them as metadata.labels.",
    config={"tags": {"type": "array", "items": {"type": "string"}, "default": list(REQUIRED_TAGS)}},
)
def required_tags(
    resources: Sequence[PolicyResource], config: Mapping[str, Any]
) -> Iterator[tuple[str | None, str]]:
    for resource in resources:
        carrier = tag_carrier(resource.resource_type)
        if carrier == "tags":
            present, kind = {**_provider_default_tags(resource), **tags_of(resource.props)}, "tags"
        elif carrier == "metadata.labels":
            present, kind = labels_of(resource.props), "labels"
        else:
            continue
        missing = [key for key in config["tags"] if not unwrap(present.get(key))]
        if missing:
            yield (
                resource.urn,
                (
                    f"{resource.resource_type.rsplit(':', 1)[-1]} "
                    f"'{resource.name}' lacks {kind}: {', '.join(missing)}"
                ),
            )


def _runs_device_plugin(resource: PolicyResource) -> bool:
    return any(
        DEVICE_PLUGIN_IMAGE in str(dig(c, "image", default=""))
        for c in containers(resource.resource_type, resource.props)
    )


def _is_budget(resource: PolicyResource) -> bool:
    """An AWS budget that notifies someone, or a Prometheus alert about a budget."""
    if resource.resource_type == BUDGET:
        return any(_subscribers(n) for n in items(dig(resource.props, "notifications")))
    if resource.resource_type == PROMETHEUS_RULE:
        rules = [r for g in items(dig(resource.props, "spec", "groups")) for r in items(dig(g, "rules"))]
        return any("budget" in str(dig(r, "alert", default="")).lower() for r in rules)
    return False


@stack_rule(
    "budget-for-gpu-stacks",
    description="A stack that provisions GPU capacity also provisions a budget with alerts "
    "(an AWS Budget that notifies someone, or an on-prem Prometheus budget alert).",
    severity=Severity.HIGH,
    remediation="Add the Monitoring component (budget with actual and forecasted thresholds "
    "and subscribers) to every stack with a GpuNodePool.",
)
def budget_for_gpu_stacks(
    resources: Sequence[PolicyResource], config: Mapping[str, Any]
) -> Iterator[tuple[str | None, str]]:
    gpu = [r for r in resources if is_gpu_capacity(r.resource_type, r.props) or _runs_device_plugin(r)]
    if gpu and not any(_is_budget(r) for r in resources):
        names = ", ".join(sorted({r.name for r in gpu}))
        yield None, f"the stack has GPU capacity ({names}) but no budget with alerts"


def _subscribers(notification: Any) -> list[str]:
    return strings(dig(notification, "subscriberEmailAddresses")) + strings(
        dig(notification, "subscriberSnsTopicArns")
    )


@resource_rule(
    "budget-alert-thresholds",
    description="Budgets alert on both actual and forecasted spend, and every alert has a subscriber.",
    severity=Severity.MEDIUM,
    remediation="Give the budget notifications with notificationType ACTUAL and FORECASTED "
    "(e.g. 50/80/100 %), each with subscriberEmailAddresses or subscriberSnsTopicArns.",
    types={BUDGET},
)
def budget_alert_thresholds(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    notifications = items(dig(props, "notifications"))
    kinds = {str(dig(n, "notificationType")) for n in notifications}
    for kind in ("ACTUAL", "FORECASTED"):
        if kind not in kinds:
            yield f"no {kind} notification"
    for index, notification in enumerate(notifications):
        if not _subscribers(notification):
            yield f"notifications[{index}] has no subscriber"


_AUTH_FLAG = re.compile(r"--app-name[= ]+basic-auth\b")


@resource_rule(
    "tracking-server-auth",
    description="The MLflow tracking server runs with authentication on.",
    severity=Severity.HIGH,
    remediation="Start the server with `mlflow server --app-name basic-auth` and give it an "
    "admin password from the KeyVault (TrackingServer does this).",
    types=None,
)
def tracking_server_auth(
    resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any]
) -> Iterator[str]:
    for container in containers(resource_type, props):
        words = strings(dig(container, "command")) + strings(dig(container, "args"))
        line = " ".join(words)
        if "mlflow" in line and "server" in line and not _AUTH_FLAG.search(line):
            yield (
                f"container '{dig(container, 'name', default='?')}' runs mlflow server "
                "without --app-name basic-auth"
            )
