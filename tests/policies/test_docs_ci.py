"""The documentation and the CI workflow stay true to the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from policies.registry import all_rules

ROOT = Path(__file__).resolve().parents[2]


def test_docs_list_every_rule() -> None:
    doc = (ROOT / "docs" / "policies.md").read_text()
    assert [r.id for r in all_rules() if f"| `{r.id}` |" not in doc] == []


def _steps() -> dict[str, dict]:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "policy.yml").read_text())
    steps = workflow["jobs"]["check"]["steps"]
    return {s.get("name", s.get("uses", "")): s for s in steps}


def test_workflow_uploads_sarif_and_comments() -> None:
    uses = {s.get("uses", "").split("@")[0] for s in _steps().values()}
    assert {"github/codeql-action/upload-sarif", "actions/github-script"} <= uses


def test_workflow_check_step_runs_as_written(tmp_path: Path) -> None:
    """Run the workflow's own check script for one stack, with the variables Actions sets."""
    script = _steps()["Offline policy check"]["run"].replace("${{ matrix.stack }}", "aws-dev")
    outputs = tmp_path / "github_output"
    env = {
        **os.environ,
        "GITHUB_OUTPUT": str(outputs),
        "REPORT_MD": str(tmp_path / "policy.md"),
        "REPORT_SARIF": str(tmp_path / "p.sarif"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True)
    assert outputs.read_text().strip() == "exit=0"
    assert (tmp_path / "policy.md").read_text().startswith("## :white_check_mark:")
    assert (tmp_path / "p.sarif").is_file()


def test_platform_guide_check_runs_where_its_step_1_leaves_you() -> None:
    """docs/platform.md's offline check (step 3), as written, from the directory step 1 ``cd``s to."""
    lines = [
        line.split("#")[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / "platform.md").read_text(), re.S)
        for line in block.splitlines()
    ]
    where = next(line.removeprefix("cd ") for line in lines if line.startswith("cd "))
    check = next(line for line in lines if line.startswith("hml policy check"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        ["bash", "-e", "-c", check], cwd=ROOT / where, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "PASS: hybridml-platform/onprem" in out.stdout
