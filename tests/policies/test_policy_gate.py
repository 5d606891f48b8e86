"""The pack as a reviewer's CI runs it, and the PR gate around it (examples/ci/policy-gate.sh).

- The engine runs the pack from its **own fresh virtualenv**: a copy of the clone's ``policies/``
  (with ``hmlkit/`` one level up, which the rules import, as in the clone), its
  ``PulumiPolicy.yaml`` as committed (``virtualenv: venv``), ``pulumi install`` in it (the engine
  asks our language host, tests/pulumihost.py, to make ``venv`` and ``pip install -r
  requirements.txt``), then ``pulumi preview --policy-pack`` with nothing pointing at this test
  interpreter's virtualenv (no ``PYTHONPATH``, no ``VIRTUAL_ENV``): the verdicts of the table in
  test_engine_pack.py. pip reads a wheel directory in ``~/.cache/hybridml`` (``pack_wheels``),
  downloaded once; no index at test time.
- The gate script, both paths, each on a violating and a passing program: with the engine on
  ``PATH`` (``pulumi preview --policy-pack``) and with a ``PATH`` lacking ``pulumi`` (``hml
  policy check``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.policies.test_engine_pack import CASES, Case, _project
from tests.pulumibed import ambient_pulumi, cache_root, engine_env, pack_wheels

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
GATE = ROOT / "examples" / "ci" / "policy-gate.sh"
TABLE = {case.name: case for case in CASES}
ENGINE_CASES = [TABLE["mandatory"], TABLE["clean"]]
MESSAGE = {"mandatory": "grants verb '*' on resource '*'"}
"""The violation's message, as both paths print it."""


def _base_python() -> str:
    """The interpreter this test's virtualenv was made from (its ``pyvenv.cfg`` ``home``): the
    pack's virtualenv is made with it, so the wheels downloaded with this pip fit."""
    cfg = dict(
        line.split(" = ", 1) for line in (VENV / "pyvenv.cfg").read_text().splitlines() if " = " in line
    )
    return str(Path(cfg["home"]) / f"python{sys.version_info[0]}.{sys.version_info[1]}")


def _reported(out: str) -> list[tuple[str, str]]:
    found = re.findall(r"- \[(mandatory|advisory)\] \[severity: \w+\]\s+([a-z0-9-]+)", out)
    return sorted((rule, level) for level, rule in found)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parts of a clone the pack runs from: ``policies/`` as committed, ``hmlkit/`` beside it."""
    root = tmp_path_factory.mktemp("clone")
    ignore = shutil.ignore_patterns("__pycache__", "venv")
    shutil.copytree(ROOT / "policies", root / "policies", ignore=ignore)
    shutil.copytree(ROOT / "hmlkit", root / "hmlkit", ignore=ignore)
    return root


@pytest.fixture(scope="module")
def pack_env(tmp_path_factory: pytest.TempPathFactory, clone: Path) -> dict[str, str]:
    """The engine's environment with nothing of this interpreter's virtualenv in it; pip reads the
    pack's wheel directory only."""
    home = tmp_path_factory.mktemp("pulumi")
    env = engine_env(home / "state", home / "home", KUBECONFIG=str(home / "no-cluster"))
    for leak in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PULUMI_PYTHON_CMD"):
        env.pop(leak, None)
    wheels = pack_wheels(clone / "policies" / "requirements.txt", sys.executable)
    env.update(
        PULUMI_PYTHON_CMD=_base_python(),
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheels),
        PIP_CACHE_DIR=str(cache_root() / "pip"),
    )
    return env


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, clone: Path, pack_env: dict[str, str]
) -> dict[str, object]:
    """Before: the engine refuses the pack (its ``venv`` is missing). Then ``pulumi install`` in
    the pack, timed."""
    pack = clone / "policies"
    probe = _project(tmp_path_factory.mktemp("probe"), TABLE["clean"])
    subprocess.run(
        ["pulumi", "stack", "init", "dev"], cwd=probe, env=pack_env, check=True, capture_output=True
    )
    before = _preview(probe, pack, pack_env)
    started = time.monotonic()
    install = subprocess.run(
        ["pulumi", "install"], cwd=pack, env=pack_env, capture_output=True, text=True, timeout=600
    )
    return {"before": before, "install": install, "seconds": time.monotonic() - started}


def _preview(project: Path, pack: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pulumi", "preview", "--non-interactive", "--policy-pack", str(pack)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.server
def test_pulumi_install_makes_the_packs_own_virtualenv(clone: Path, installed: dict) -> None:
    before = installed["before"]
    out = before.stdout + before.stderr
    assert before.returncode != 0, out
    assert f"{clone}/policies/venv" in out and "doesn't exist" in out, out
    if ambient_pulumi() is None:  # our language host's words (a pulumi on PATH brings its own host)
        assert (
            f"'virtualenv' option in PulumiPolicy.yaml is set to 'venv', but '{clone}/policies/venv'" in out
        )
        assert "doesn't exist; run `pulumi install`" in out

    install = installed["install"]
    assert install.returncode == 0, install.stdout + install.stderr
    assert "Creating virtual environment..." in install.stdout
    print(f"pulumi install of the pack: {installed['seconds']:.1f} s")

    manifest = yaml.safe_load((clone / "policies" / "PulumiPolicy.yaml").read_text())
    assert manifest == yaml.safe_load((ROOT / "policies" / "PulumiPolicy.yaml").read_text())
    assert manifest["runtime"]["options"]["virtualenv"] == "venv"
    venv = clone / "policies" / "venv"
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg and str(VENV) not in cfg
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed)}
    assert {"pulumi", "pulumi-policy", "pulumi-aws", "pulumi-kubernetes", "pyyaml"} <= names
    assert "hybridml" not in names and "mlflow" not in names  # nothing of this test's virtualenv


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("case", ENGINE_CASES, ids=[c.name for c in ENGINE_CASES])
def test_engine_runs_the_pack_from_its_own_virtualenv(
    case: Case, clone: Path, pack_env: dict[str, str], installed: dict, tmp_path: Path
) -> None:
    """The table's verdict, the pack in ``policies/venv`` as PulumiPolicy.yaml says."""
    assert installed["install"].returncode == 0
    project = _project(tmp_path, case)
    env = {**pack_env, "PULUMI_BACKEND_URL": f"file://{tmp_path}"}
    subprocess.run(["pulumi", "stack", "init", "dev"], cwd=project, env=env, check=True, capture_output=True)
    preview = _preview(project, clone / "policies", env)
    out = preview.stdout + preview.stderr
    assert (preview.returncode == 0) == case.passes, out
    assert _reported(out) == sorted(case.violated), out


def _gate(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(GATE), str(project), "dev"], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("case", ENGINE_CASES, ids=[c.name for c in ENGINE_CASES])
def test_gate_with_the_engine(
    case: Case, clone: Path, pack_env: dict[str, str], installed: dict, tmp_path: Path
) -> None:
    """``pulumi`` on PATH: the gate installs the pack (keeping its virtualenv) and previews with it."""
    assert installed["install"].returncode == 0
    project = _project(tmp_path, case)
    env = {**pack_env, "PULUMI_BACKEND_URL": f"file://{tmp_path}", "POLICY_PACK": str(clone / "policies")}
    subprocess.run(["pulumi", "stack", "init", "dev"], cwd=project, env=env, check=True, capture_output=True)
    gate = _gate(project, env)
    out = gate.stdout + gate.stderr
    assert "policy-gate: the Pulumi engine: pulumi preview --policy-pack" in out, out
    assert "Creating virtual environment" not in out  # the pack's venv is kept
    assert _reported(out) == sorted(case.violated), out
    if case.passes:
        assert gate.returncode == 0 and out.rstrip().endswith("policy-gate: passed"), out
    else:
        assert gate.returncode != 0, out
        assert MESSAGE[case.name] in out, out
        assert f"policy-gate: FAILED (exit {gate.returncode})" in out


@pytest.mark.parametrize("case", ENGINE_CASES, ids=[c.name for c in ENGINE_CASES])
def test_gate_without_the_engine(case: Case, tmp_path: Path) -> None:
    """No ``pulumi`` on PATH: the offline check, exit 1 on the mandatory violation."""
    path = os.pathsep.join([str(VENV / "bin"), "/usr/bin", "/bin"])
    assert shutil.which("pulumi", path=path) is None
    project = _project(tmp_path, case)
    env = {
        "PATH": path,
        "HOME": os.environ["HOME"],
        "HML": str(VENV / "bin" / "hml"),
        "PYTHONPATH": str(ROOT),  # this checkout's code (the console script's may be another clone's)
    }
    gate = _gate(project, env)
    out = gate.stdout + gate.stderr
    assert "policy-gate: no pulumi CLI on PATH: the offline check" in out, out
    if case.passes:
        assert gate.returncode == 0 and out.rstrip().endswith("policy-gate: passed"), out
    else:
        assert gate.returncode == 1, out
        for rule, level in case.violated:
            assert re.search(rf"{level}\s.*{rule}\s.*{re.escape(MESSAGE[case.name])}", out), out
        assert "policy-gate: FAILED (exit 1)" in out


def test_the_example_workflow_runs_the_gate() -> None:
    """examples/ci/policy-gate.yml's gate step is this script, POSIX sh; bad usage exits 2."""
    workflow = yaml.safe_load((ROOT / "examples" / "ci" / "policy-gate.yml").read_text())
    steps = {s.get("name", s.get("uses", "")): s for s in workflow["jobs"]["gate"]["steps"]}
    assert steps["Policy gate"]["run"].startswith("sh examples/ci/policy-gate.sh stacks/platform ")
    assert steps["Install the Pulumi CLI (engine runs only)"]["if"] == "env.ENGINE == 'true'"
    assert (ROOT / "stacks" / "platform" / "Pulumi.yaml").is_file()
    assert os.access(GATE, os.X_OK)
    assert subprocess.run(["sh", "-n", str(GATE)], capture_output=True).returncode == 0
    usage = subprocess.run(["sh", str(GATE), "only-one"], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: ")
