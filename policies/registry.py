"""The rule registry: every rule's id, description, severity, remediation and enforcement level.

A rule is a pure function registered here with its metadata. The CrossGuard pack
(``policies/pack.py``) and the offline evaluator (``policies/evaluate.py``) both wrap the very
same function, so a rule exists exactly once. Rule modules register themselves on import;
``all_rules()`` imports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pulumi_policy import EnforcementLevel, PolicyResource, Severity

#: ``check(resource_type, props, config)`` yields one message per violation.
ResourceCheck = Callable[[str, Mapping[str, Any], Mapping[str, Any]], Iterable[str]]
#: ``check(resources, config)`` yields ``(urn or None, message)``; None means the whole stack.
StackCheck = Callable[[Sequence[PolicyResource], Mapping[str, Any]], Iterable[tuple[str | None, str]]]

RULE_MODULES = ("storage", "access", "compute", "governance")


@dataclass(frozen=True)
class Rule:
    """One policy. ``config`` holds JSON-schema properties, each with its ``default``."""

    id: str
    description: str
    severity: Severity
    remediation: str
    scope: Literal["resource", "stack"]
    check: Callable[..., Iterable[Any]]
    types: frozenset[str] | None = None
    enforcement: EnforcementLevel = EnforcementLevel.MANDATORY
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def applies_to(self, resource_type: str) -> bool:
        return self.types is None or resource_type in self.types

    def settings(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The rule's defaults overlaid with the pack configuration the user gave."""
        merged = {key: schema["default"] for key, schema in self.config.items()}
        merged.update({k: v for k, v in (given or {}).items() if k != "enforcementLevel"})
        return merged


_RULES: dict[str, Rule] = {}


def _register(rule: Rule) -> None:
    if rule.id in _RULES:
        raise ValueError(f"duplicate policy id {rule.id!r}: every rule id must be unique")
    _RULES[rule.id] = rule


def resource_rule(
    id: str,
    *,
    description: str,
    severity: Severity,
    remediation: str,
    types: Iterable[str] | None,
    enforcement: EnforcementLevel = EnforcementLevel.MANDATORY,
    config: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[ResourceCheck], ResourceCheck]:
    """Register a check run on each resource whose type is in ``types`` (None: every type)."""

    def register(check: ResourceCheck) -> ResourceCheck:
        _register(
            Rule(
                id,
                description,
                severity,
                remediation,
                "resource",
                check,
                None if types is None else frozenset(types),
                enforcement,
                config or {},
            )
        )
        return check

    return register


def stack_rule(
    id: str,
    *,
    description: str,
    severity: Severity,
    remediation: str,
    enforcement: EnforcementLevel = EnforcementLevel.MANDATORY,
    config: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[StackCheck], StackCheck]:
    """Register a check run once over all the stack's resources."""

    def register(check: StackCheck) -> StackCheck:
        _register(
            Rule(id, description, severity, remediation, "stack", check, None, enforcement, config or {})
        )
        return check

    return register


def all_rules() -> list[Rule]:
    """Every rule, sorted by id (importing the rule modules registers them)."""
    for module in RULE_MODULES:
        importlib.import_module(f"policies.rules.{module}")
    return sorted(_RULES.values(), key=lambda rule: rule.id)
