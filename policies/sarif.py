"""SARIF 2.1.0 for GitHub code scanning: one result per violation, ``ruleId`` = the rule's id.

Paths are relative to ``%SRCROOT%`` (the working directory, the repository root in CI) so
code scanning can place each alert on the program line that created the resource, or on the
stack's config file for stack-wide violations. What offline evaluation could not see travels as
tool execution notifications, so it is visible next to the results.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from policies.report import Finding, Location, Report, relative

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "hybridml-policy"
#: GitHub ranks code-scanning alerts by this property (0.1 - 10).
_SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0"}


def _rule_descriptor(rule: Any) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": "".join(part.title() for part in rule.id.split("-")),
        "shortDescription": {"text": rule.description},
        "fullDescription": {"text": rule.description},
        "help": {"text": rule.remediation, "markdown": f"**Fix:** {rule.remediation}"},
        "defaultConfiguration": {"level": "error" if rule.enforcement.value == "mandatory" else "warning"},
        "properties": {
            "security-severity": _SECURITY_SEVERITY[rule.severity.value],
            "tags": ["security", "infrastructure"],
            "precision": "high",
        },
    }


def _physical(location: Location, root: Path) -> dict[str, Any]:
    path = relative(location.path, root)
    artifact = (
        {"uri": path, "uriBaseId": "%SRCROOT%"}
        if not Path(path).is_absolute()
        else {"uri": location.path.resolve().as_uri()}
    )
    return {"artifactLocation": artifact, "region": {"startLine": location.line}}


def _result(finding: Finding, index: int, root: Path) -> dict[str, Any]:
    location: dict[str, Any] = {}
    if finding.location:
        location["physicalLocation"] = _physical(finding.location, root)
    if finding.urn:
        location["logicalLocations"] = [{"fullyQualifiedName": finding.urn, "kind": "resource"}]
    identity = f"{finding.rule.id}|{finding.urn or 'stack'}|{finding.message}"
    related = (
        [
            {
                "id": 1,
                "physicalLocation": _physical(finding.origin, root),
                "message": {"text": "registered here"},
            }
        ]
        if finding.origin
        else []
    )
    return {
        "relatedLocations": related,
        "ruleId": finding.rule.id,
        "ruleIndex": index,
        "level": "error" if finding.mandatory else "warning",
        "message": {"text": f"{finding.subject}: {finding.message}. Fix: {finding.rule.remediation}"},
        "locations": [location] if location else [],
        "partialFingerprints": {"hybridmlPolicy/v1": hashlib.sha256(identity.encode()).hexdigest()},
    }


def to_sarif(report: Report, version: str = "0.1.0") -> dict[str, Any]:
    root = Path.cwd().resolve()
    index = {rule.id: i for i, rule in enumerate(report.rules)}
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL_NAME,
                        "version": version,
                        "informationUri": "https://www.pulumi.com/docs/using-pulumi/crossguard/",
                        "rules": [_rule_descriptor(rule) for rule in report.rules],
                    }
                },
                "originalUriBaseIds": {"%SRCROOT%": {"uri": root.as_uri() + "/"}},
                "automationDetails": {"id": f"hybridml-policy/{report.project}/{report.stack}/"},
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "toolExecutionNotifications": [
                            {"level": "note", "message": {"text": note.message}} for note in report.notes
                        ],
                    }
                ],
                "results": [_result(f, index[f.rule.id], root) for f in report.sorted_findings()],
            }
        ],
    }
