"""Optional extras fail politely: a plain ``pip install hybridml`` never shows a traceback.

The package is installed without any extra into a fresh virtual environment, and every command
is run there: the local target works; what needs paramiko, boto3 or pulumi says which extra to
install and exits 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bare_hml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    for module in ("paramiko", "boto3", "pulumi", "torch"):
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} came with the base install; the test proves nothing"
    return venv / "bin" / "hml"


@pytest.mark.slow
def test_every_command_without_extras(bare_hml, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "bare", "run": "echo from-a-bare-install"}))
    secret_job = tmp_path / "secret.yaml"
    secret_job.write_text(yaml.safe_dump({"name": "bare", "run": "true", "secrets": ["TOKEN"]}))
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "vault": {"kind": "aws", "prefix": "hml/", "region": "eu-west-1"},
                "targets": {
                    "local": {"kind": "local"},
                    "onprem": {"kind": "ssh", "hosts": [{"address": "127.0.0.1", "user": "hml"}]},
                },
            }
        )
    )
    env = {**os.environ, "HML_HOME": str(tmp_path / "home")}
    env.pop("HML_CONFIG", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([str(bare_hml), *args], capture_output=True, text=True, env=env, timeout=300)
        assert "Traceback" not in out.stderr + out.stdout, out.stderr
        return out

    for args in (["--help"], ["--version"], ["list"], ["targets"], ["submit", str(job), "--dry-run"]):
        assert run(*args).returncode == 0, args
    done = run("submit", str(job))
    assert done.returncode == 0 and "from-a-bare-install" in done.stdout, done.stderr
    wants = [
        (["-c", str(profile), "submit", str(job), "--target", "onprem"], "hybridml[ssh]"),
        (["-c", str(profile), "targets", "trust", "onprem", "--yes"], "hybridml[ssh]"),
        (["-c", str(profile), "submit", str(secret_job), "--target", "local"], "hybridml[aws]"),
        (["policy", "check", str(ROOT / "stacks" / "platform"), "--stack", "onprem"], "hybridml[infra]"),
    ]
    for args, extra in wants:
        out = run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert f"pip install '{extra}'" in out.stderr, (args, out.stderr)


@pytest.mark.slow
def test_the_agent_runs_without_extras(bare_hml, tmp_path):
    """It preloads what is installed (paramiko only with the ``ssh`` extra), so the first
    submit's agent serves the next one on the quick start's own install too."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "HML_HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(runtime)}
    for name in ("HML_CONFIG", "HML_AGENT"):
        env.pop(name, None)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "bare", "run": "echo through-the-agent"}))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bare_hml), *args], capture_output=True, text=True, env=env, timeout=300)

    try:
        started = run("agent", "start")
        assert started.returncode == 0 and "agent: running, pid" in started.stdout, started.stderr
        done = run("submit", str(job))
        assert done.returncode == 0 and "through-the-agent" in done.stdout, done.stderr
        assert "Traceback" not in (runtime / "hml" / "agent.log").read_text()
        assert "running" in run("agent").stdout
    finally:
        run("agent", "stop")
