"""Wrap every registered rule as a CrossGuard policy, without starting the analyzer.

``build_policies()`` is what both sides run: the pack's entry point hands the result to
``PolicyPack`` (which serves them to the engine), and the offline evaluator calls each
policy's ``validate`` itself with ``ResourceValidationArgs``/``StackValidationArgs`` it builds
from the mocked program. So enforcement levels, configuration and the rule code are the same
in ``pulumi preview --policy-pack policies/`` and in ``hml policy check``.
"""

from __future__ import annotations

from pulumi_policy import (
    Policy,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

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
        for urn, message in rule.check(args.resources, rule.settings(args.get_config())):
            report(message, urn)

    return StackValidationPolicy(validate=validate_stack, **common)


def build_policies() -> list[Policy]:
    return [to_policy(rule) for rule in all_rules()]
