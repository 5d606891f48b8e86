"""The policy pack under the real engine: ``pulumi preview --policy-pack`` (tests/pulumibed.py) and
the offline ``hml policy check`` give the same verdict on one table of cases.

The programs declare Kubernetes objects only (the AWS provider cannot be built from the module
proxy; docs/platform.md). ``preview`` needs no cluster: the provider previews against an
unreachable one. The pack runs from a copy of ``policies/`` whose ``PulumiPolicy.yaml`` points
at this interpreter's virtualenv (it has the pack's requirements). The pack in a fresh
virtualenv of its own, as committed (``virtualenv: venv``), made by ``pulumi install``:
test_policy_gate.py, on two of these cases.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.pulumibed import engine_env

pytestmark = [pytest.mark.slow, pytest.mark.server]  # the engine and the pack's analyzer run

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
LABELS = '{"team": "ml", "cost-center": "cc-1", "environment": "dev"}'
NARROW = '[{"api_groups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]'
WILDCARD = '[{"api_groups": ["*"], "resources": ["*"], "verbs": ["*"]}]'


@dataclass(frozen=True)
class Case:
    name: str
    rules: str
    labels: str = LABELS
    pack_config: dict[str, str] | None = None
    passes: bool = True
    violated: tuple[tuple[str, str], ...] = ()
    """(rule id, enforcement) of every violation expected."""


CASES = [
    Case("clean", NARROW),
    Case("mandatory", WILDCARD, passes=False, violated=(("k8s-rbac-no-wildcard", "mandatory"),)),
    Case(
        "advisory",
        WILDCARD,
        pack_config={"k8s-rbac-no-wildcard": "advisory"},
        violated=(("k8s-rbac-no-wildcard", "advisory"),),
    ),
    Case("unlabelled", NARROW, labels="{}", passes=False, violated=(("required-tags", "mandatory"),)),
]


def _project(root: Path, case: Case) -> Path:
    project = root / case.name
    project.mkdir()
    (project / "Pulumi.yaml").write_text(
        f"name: pack-{case.name}\nruntime:\n  name: python\n  options:\n    virtualenv: {VENV}\n"
    )
    (project / "Pulumi.dev.yaml").write_text("config: {}\n")
    (project / "__main__.py").write_text(
        "import pulumi_kubernetes as k8s\n\n"
        f'k8s.rbac.v1.Role("reader", metadata={{"namespace": "ml", "labels": {case.labels}}},\n'
        f"    rules={case.rules})\n"
    )
    return project


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of policies/ (the engine writes into a pack's directory) using this virtualenv."""
    copy = tmp_path_factory.mktemp("pack") / "policies"
    shutil.copytree(ROOT / "policies", copy, ignore=shutil.ignore_patterns("__pycache__", "venv"))
    manifest = yaml.safe_load((copy / "PulumiPolicy.yaml").read_text())
    manifest["runtime"]["options"]["virtualenv"] = str(VENV)
    (copy / "PulumiPolicy.yaml").write_text(yaml.safe_dump(manifest))
    return copy


def _config(root: Path, case: Case) -> list[str]:
    if case.pack_config is None:
        return []
    path = root / f"{case.name}-pack.json"
    path.write_text(json.dumps(case.pack_config))
    return [str(path)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_engine_and_offline_check_agree(case: Case, pack: Path, tmp_path: Path) -> None:
    project = _project(tmp_path, case)
    config = _config(tmp_path, case)
    env = engine_env(tmp_path / "state", tmp_path / "pulumi-home", KUBECONFIG=str(tmp_path / "no-cluster"))
    subprocess.run(["pulumi", "stack", "init", "dev"], cwd=project, env=env, check=True, capture_output=True)

    preview = subprocess.run(
        [
            "pulumi",
            "preview",
            "--non-interactive",
            "--policy-pack",
            str(pack),
            *(["--policy-pack-config", config[0]] if config else []),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    engine_out = preview.stdout + preview.stderr
    assert (preview.returncode == 0) == case.passes, engine_out
    reported = re.findall(r"- \[(mandatory|advisory)\] \[severity: \w+\]\s+([a-z0-9-]+)", engine_out)
    assert sorted((rule, level) for level, rule in reported) == sorted(case.violated), engine_out

    offline = subprocess.run(
        [
            str(VENV / "bin" / "hml"),
            "policy",
            "check",
            str(project),
            "--stack",
            "dev",
            "-o",
            "json",
            *(["--pack-config", config[0]] if config else []),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert offline.returncode == (0 if case.passes else 1), offline.stdout + offline.stderr
    report = json.loads(offline.stdout)
    assert report["passed"] is case.passes
    assert sorted((v["rule"], v["enforcement"]) for v in report["violations"]) == sorted(case.violated)
    for violation in report["violations"]:  # the same finding, word for word, from the same rule
        assert violation["message"] in engine_out, (violation, engine_out)
