"""The CrossGuard pack: rule metadata, and the real analyzer answering the engine's gRPC calls.

``policies/__main__.py`` is started exactly as ``pulumi preview --policy-pack policies/`` starts
it (a Python process that prints its port and serves the Analyzer service); the test then
plays the engine: it asks for the pack's policies and sends resources to analyze.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy.proxy import UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE

from policies.registry import all_rules

PACK_DIR = Path(__file__).resolve().parents[2] / "policies"
#: The issue's list of what the pack must cover, by rule id.
REQUIRED_COVERAGE = {
    "s3-bucket-kms-encryption",
    "s3-dataset-versioning",
    "s3-public-access-blocked",
    "s3-tls-only",
    "s3-retention-plan",
    "s3-retention-limits",
    "kms-key-rotation",
    "no-plaintext-secrets",
    "workload-env-secret-refs",
    "gpu-nodepool-max-size",
    "gpu-spot-outside-production",
    "budget-for-gpu-stacks",
    "required-tags",
    "iam-no-wildcard-admin",
    "gpu-nodes-tainted",
    "tracking-server-auth",
    "sg-no-public-ssh",
}


def test_rules_carry_complete_metadata() -> None:
    rules = all_rules()
    assert len(rules) >= 20
    assert REQUIRED_COVERAGE <= {rule.id for rule in rules}
    for rule in rules:
        assert rule.description.endswith(".") and rule.remediation.endswith("."), rule.id
        assert all("default" in schema for schema in rule.config.values()), rule.id


def test_the_pack_loads_no_component_test_code_or_program_runner() -> None:
    """The pack's venv has neither the components' dependencies nor the tests; the offline
    runner (Pulumi's mock engine) is for ``hml policy check`` only, loaded when it runs."""
    code = (
        "import sys; import policies.evaluate; from policies.pack import build_policies; "
        "build_policies(); print(sorted(m for m in sys.modules if m == 'policies.offline' "
        "or m.split('.')[0] in ('components', 'runners', 'tests')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PACK_DIR.parent, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]"


@contextlib.contextmanager
def serve_pack() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """The pack as the CLI starts it: ``python -u __main__.py`` in policies/, port on stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "__main__.py"], cwd=PACK_DIR, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    with serve_pack() as stub:
        yield stub


def test_pack_serves_every_rule(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "hybridml"
    served = {p.name: p for p in info.policies}
    rules = {rule.id: rule for rule in all_rules()}
    assert set(served) == set(rules)
    assert served["sg-no-public-ssh"].remediation_steps.startswith("Allow port 22 only")
    # What the engine is told: each rule's own level, severity and configuration defaults.
    assert {
        name: (
            analyzer_pb2.EnforcementLevel.Name(p.enforcementLevel),
            analyzer_pb2.PolicySeverity.Name(p.severity),
        )
        for name, p in served.items()
    } == {
        rule.id: (rule.enforcement.name, f"POLICY_SEVERITY_{rule.severity.name}") for rule in rules.values()
    }
    defaults = {
        name: {
            key: value["default"]
            for key, value in json_format.MessageToDict(p.configSchema.properties).items()
        }
        for name, p in served.items()
    }
    assert defaults == {rule.id: rule.settings(None) for rule in rules.values()}


def _struct(values: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def test_pack_analyzes_a_resource(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    def analyze(props: dict) -> set[str]:
        response = analyzer.Analyze(
            analyzer_pb2.AnalyzeRequest(
                type="aws:kms/key:Key",
                properties=_struct(props),
                name="key",
                urn="urn:pulumi:dev::p::aws:kms/key:Key::key",
            )
        )
        return {d.policyName for d in response.diagnostics}

    assert analyze({"enableKeyRotation": False}) == {"kms-key-rotation"}
    assert analyze({"enableKeyRotation": True}) == set()


def test_an_advisory_rules_violation_is_reported_as_advisory(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    group = {
        "amiType": "AL2_x86_64_GPU",
        "capacityType": "SPOT",
        "scalingConfig": {"maxSize": 4},
        "taints": [{"key": "nvidia.com/gpu", "effect": "NO_SCHEDULE"}],
        "tags": {"team": "ml", "cost-center": "c", "environment": "production"},
    }
    response = analyzer.Analyze(
        analyzer_pb2.AnalyzeRequest(
            type="aws:eks/nodeGroup:NodeGroup",
            properties=_struct(group),
            name="gpu",
            urn="urn:pulumi:prod::p::aws:eks/nodeGroup:NodeGroup::gpu",
        )
    )
    assert {d.policyName: d.enforcementLevel for d in response.diagnostics} == {
        "gpu-ondemand-in-production": analyzer_pb2.ADVISORY
    }


def test_pack_analyzes_the_stack(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    group = analyzer_pb2.AnalyzerResource(
        type="aws:eks/nodeGroup:NodeGroup",
        name="gpu",
        urn="urn:pulumi:dev::p::ng::gpu",
        properties=_struct(
            {"amiType": "AL2_x86_64_GPU", "tags": {"team": "ml", "cost-center": "c", "environment": "dev"}}
        ),
    )
    response = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=[group]))
    assert {d.policyName for d in response.diagnostics} == {"budget-for-gpu-stacks"}


def test_pack_stack_rules_run_during_preview(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    """A new bucket's provider-computed outputs are unknown in preview; rules still judge it."""
    bucket = analyzer_pb2.AnalyzerResource(
        type="aws:s3/bucket:Bucket",
        name="b",
        urn="urn:pulumi:dev::p::aws:s3/bucket:Bucket::b",
        properties=_struct(
            {
                "bucket": UNKNOWN_STRING_VALUE,
                "acl": UNKNOWN_STRING_VALUE,
                "serverSideEncryptionConfiguration": UNKNOWN_OBJECT_VALUE,
                "tags": {"team": "ml", "cost-center": "c", "environment": "dev"},
            }
        ),
    )
    response = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=[bucket]))
    assert {d.policyName for d in response.diagnostics} == {
        "s3-bucket-kms-encryption",
        "s3-public-access-blocked",
        "s3-tls-only",
        "s3-retention-plan",
        "s3-cold-tier",
    }
    assert not [d.message for d in response.diagnostics if "during preview" in d.message]


def test_pack_configuration_sets_level_and_limit() -> None:
    """``--policy-pack-config`` reaches the rules: an enforcement level and a property."""
    group = {
        "amiType": "AL2_x86_64_GPU",
        "capacityType": "SPOT",
        "scalingConfig": {"maxSize": 64},
        "taints": [{"key": "nvidia.com/gpu", "effect": "NO_SCHEDULE"}],
    }

    def levels(stub: analyzer_pb2_grpc.AnalyzerStub) -> dict[str, int]:
        response = stub.Analyze(
            analyzer_pb2.AnalyzeRequest(
                type="aws:eks/nodeGroup:NodeGroup",
                properties=_struct(group),
                name="gpu",
                urn="urn:pulumi:dev::p::aws:eks/nodeGroup:NodeGroup::gpu",
            )
        )
        return {d.policyName: d.enforcementLevel for d in response.diagnostics}

    with serve_pack() as stub:
        assert levels(stub) == {"gpu-nodepool-max-size": analyzer_pb2.MANDATORY}
        stub.Configure(
            analyzer_pb2.ConfigureAnalyzerRequest(
                policyConfig={
                    "gpu-nodepool-max-size": analyzer_pb2.PolicyConfig(
                        enforcementLevel=analyzer_pb2.ADVISORY, properties=_struct({"maxNodes": 32})
                    )
                }
            )
        )
        assert levels(stub) == {"gpu-nodepool-max-size": analyzer_pb2.ADVISORY}
        stub.Configure(
            analyzer_pb2.ConfigureAnalyzerRequest(
                policyConfig={
                    "gpu-nodepool-max-size": analyzer_pb2.PolicyConfig(
                        enforcementLevel=analyzer_pb2.MANDATORY, properties=_struct({"maxNodes": 64})
                    )
                }
            )
        )
        assert levels(stub) == {}
