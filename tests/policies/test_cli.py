"""``hml policy check`` as a user runs it: exit codes, report files, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policies.cli import app
from tests.policies.conftest import BADSTACK, PLATFORM

runner = CliRunner()


def test_bad_stack_exits_1_and_writes_both_reports(tmp_path: Path) -> None:
    markdown, sarif = tmp_path / "out" / "policy.md", tmp_path / "out" / "policy.sarif"
    result = runner.invoke(
        app, ["check", str(BADSTACK), "--stack", "bad", "--markdown", str(markdown), "--sarif", str(sarif)]
    )
    assert result.exit_code == 1, result.output
    assert "FAIL: badstack/bad" in result.output and "kms-key-rotation" in result.output
    assert "| :no_entry: | `sg-no-public-ssh` |" in markdown.read_text()
    assert json.loads(sarif.read_text())["version"] == "2.1.0"


def test_example_stack_exits_0_with_json_output() -> None:
    result = runner.invoke(app, ["check", str(PLATFORM), "--stack", "aws-dev", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True


@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "/nonexistent/project", "--stack", "dev"], "no Pulumi.yaml here"),
        (["check", str(BADSTACK), "--stack", "nope"], "stacks here: bad, broken"),
        (
            ["check", str(BADSTACK), "--stack", "broken"],
            "the program failed: ConfigMissingError: Missing required configuration variable "
            "'badstack:environment'",
        ),
        (
            ["check", str(BADSTACK), "--stack", "bad", "--pack-config", "/nonexistent.json"],
            "cannot read the pack configuration",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_errors_read_like_every_other_hml_command(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "hml"), "policy", "check", str(tmp_path), "--stack", "dev"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"hml: error: {tmp_path.resolve()}: no Pulumi.yaml here; give the directory of a Pulumi project "
        "(e.g. stacks/platform)"
    ]


def test_malformed_stack_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: broken\nruntime: python\n")
    (tmp_path / "Pulumi.dev.yaml").write_text("config: [unclosed\n")
    result = runner.invoke(app, ["check", str(tmp_path), "--stack", "dev"])
    assert result.exit_code == 2 and "cannot read Pulumi.yaml / Pulumi.dev.yaml" in result.stderr


def test_non_python_project_exits_2(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: web\nruntime: nodejs\n")
    (tmp_path / "Pulumi.dev.yaml").write_text("config: {}\n")
    result = runner.invoke(app, ["check", str(tmp_path), "--stack", "dev"])
    assert result.exit_code == 2 and "runtime 'nodejs'" in result.stderr


def test_unwritable_report_path_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(
        app, ["check", str(BADSTACK), "--stack", "bad", "--markdown", str(blocker / "report.md")]
    )
    assert result.exit_code == 2 and "cannot write the report" in result.stderr


def test_importing_the_cli_loads_no_pulumi() -> None:
    code = (
        "import sys, policies.cli; "
        "print([m for m in ('pulumi', 'pulumi_policy', 'pulumi_aws') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "policies.cli", "check", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "--sarif" in done.stdout
