"""Helpers for policy tests: call the pack's own policies the way the engine does.

Rule tests build the SDK's ``ResourceValidationArgs``/``StackValidationArgs``/``PolicyResource``
by hand and call the ``Policy`` objects from ``policies.pack.build_policies()``, so they test the
same wrapper the CrossGuard pack serves. Stack evaluations are slow-ish (they run programs under
mocks), so each is done once per session.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import (
    Policy,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.proxy import unknown_checking_proxy

from policies.evaluate import evaluate
from policies.pack import build_policies
from policies.report import Report

HERE = Path(__file__).parent
BADSTACK = HERE / "badstack"
PLATFORM = HERE.parent.parent / "stacks" / "platform"
POLICIES: dict[str, Policy] = {p.name: p for p in build_policies()}
_OPTS = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


def urn(resource_type: str, name: str) -> str:
    return f"urn:pulumi:test::proj::{resource_type}::{name}"


def check_resource(
    rule_id: str, resource_type: str, props: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> list[str]:
    """The messages the pack's policy reports for one resource, as during ``pulumi up``."""
    messages: list[str] = []
    args = ResourceValidationArgs(
        resource_type, unknown_checking_proxy(dict(props)), urn(resource_type, "r"), "r", _OPTS, None, config
    )
    POLICIES[rule_id].validate(args, lambda message, _urn=None: messages.append(message))
    return messages


def res(
    resource_type: str,
    name: str,
    props: Mapping[str, Any] | None = None,
    *,
    provider: Mapping[str, Any] | None = None,
    deps: Mapping[str, PolicyResource] | None = None,
) -> PolicyResource:
    """A stack member; ``deps`` maps an input to the resource whose output fed it."""
    prov = (
        PolicyProviderResource(
            "pulumi:providers:aws",
            unknown_checking_proxy(dict(provider)),
            urn("pulumi:providers:aws", "p"),
            "p",
        )
        if provider is not None
        else None
    )
    return PolicyResource(
        resource_type,
        unknown_checking_proxy(dict(props or {})),
        urn(resource_type, name),
        name,
        _OPTS,
        prov,
        None,
        [],
        {key: [target] for key, target in (deps or {}).items()},
    )


def check_stack(
    rule_id: str, resources: list[PolicyResource], config: Mapping[str, Any] | None = None
) -> list[tuple[str | None, str]]:
    reported: list[tuple[str | None, str]] = []
    args = StackValidationArgs(resources, config)
    POLICIES[rule_id].validate(args, lambda message, u=None: reported.append((u, message)))
    return reported


@pytest.fixture(scope="session")
def bad_report() -> Report:
    return evaluate(BADSTACK, "bad")


@pytest.fixture(scope="session")
def platform_reports() -> dict[str, Report]:
    return {stack: evaluate(PLATFORM, stack) for stack in ("onprem", "aws-dev", "hybrid")}
