"""Wrap every registered rule as a CrossGuard policy, without starting the analyzer.

``build_policies()`` is what both sides run: the pack's entry point hands the result to
``PolicyPack`` (which serves them to the engine), and the offline evaluator calls each
policy's ``validate`` itself with ``ResourceValidationArgs``/``StackValidationArgs`` it builds
from the mocked program. So enforcement levels, configuration and the rule code are the same
in ``pulumi preview --policy-pack policies/`` and in ``hml policy check``.

Stack rules see each resource's *outputs*. During ``pulumi preview`` a new resource's outputs
that the provider computes (a bucket's default encryption, a node group's AMI type when not
given) are unknown, and reading one would abort the rule. ``settled()`` hands stack rules a
view in which such unknowns are absent (the program did not set them), while an unknown the
program did set from another resource's output (it has a property dependency) stays present as
the SDK's "unknown" text: set, value pending, as it is judged offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import (
    Policy,
    PolicyConfigSchema,
    PolicyProviderResource,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from policies.registry import Rule, all_rules

PACK_NAME = "hybridml"


def to_policy(rule: Rule) -> Policy:
    """The CrossGuard policy that runs ``rule.check`` with the rule's defaults and config."""
    common = {
        "name": rule.id,
        "description": rule.description,
        "enforcement_level": rule.enforcement,
        "severity": rule.severity,
        "remediation_steps": rule.remediation,
        "config_schema": PolicyConfigSchema(dict(rule.config)) if rule.config else None,
    }
    if rule.scope == "resource":

        def validate_resource(args: ResourceValidationArgs, report: ReportViolation) -> None:
            if rule.applies_to(args.resource_type):
                settings = rule.settings(args.get_config())
                for message in rule.check(args.resource_type, args.props, settings):
                    report(message, None)

        return ResourceValidationPolicy(validate=validate_resource, **common)

    def validate_stack(args: StackValidationArgs, report: ReportViolation) -> None:
        for urn, message in rule.check(settled(args.resources), rule.settings(args.get_config())):
            report(message, urn)

    return StackValidationPolicy(validate=validate_stack, **common)


def _settle(value: Any, keep_pending: bool) -> Any:
    """A plain copy of ``value``; unknowns inside become their sentinel text or vanish."""
    if isinstance(value, Secret):
        return Secret(_settle(value.value, keep_pending))
    if isinstance(value, Mapping):
        settled: dict[Any, Any] = {}
        for key in value:
            _put(settled, value, key, keep_pending)
        return settled
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        elements: dict[int, Any] = {}
        for index in range(len(value)):
            _put(elements, value, index, keep_pending)
        return list(elements.values())
    return value


def _put(into: dict[Any, Any], container: Any, key: Any, keep_pending: bool) -> None:
    try:
        into[key] = _settle(container[key], keep_pending)
    except UnknownValueError as exc:
        if keep_pending:
            into[key] = exc.unknown_type_sentinel


def settled(resources: Sequence[PolicyResource]) -> list[PolicyResource]:
    """Copies of the stack's resources without provider-computed unknowns (see above)."""
    copies = {}
    for r in resources:
        props: dict[str, Any] = {}
        for key in r.props:
            _put(props, r.props, key, bool(r.property_dependencies.get(key)))
        provider = r.provider and PolicyProviderResource(
            r.provider.resource_type, _settle(r.provider.props, True), r.provider.urn, r.provider.name
        )
        copies[r.urn] = PolicyResource(r.resource_type, props, r.urn, r.name, r.opts, provider, None, [], {})
    for r in resources:
        copy = copies[r.urn]
        copy.parent = copies.get(r.parent.urn) if r.parent else None
        copy.dependencies = [copies[d.urn] for d in r.dependencies if d.urn in copies]
        copy.property_dependencies = {
            k: [copies[d.urn] for d in deps if d.urn in copies] for k, deps in r.property_dependencies.items()
        }
    return list(copies.values())


def build_policies() -> list[Policy]:
    return [to_policy(rule) for rule in all_rules()]
