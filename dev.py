#!/usr/bin/env python3
"""The two quick-start commands, needing only python3 on a fresh machine.

    python3 dev.py demo   install hybridml into .venv and run the digits example locally
    python3 dev.py test   install everything the tests need (Debian sshd too; the Kubernetes bed
                          and the Pulumi engine, built from the Go module proxy once per machine),
                          run ruff, the import-linter contracts and mypy, then every test, two
                          workers a core
    python3 dev.py test --fast   the edit loop: ruff, then the tests that start no server (nor slow)
    python3 dev.py test tests/runners -x   only pytest, with these arguments

Each step is skipped when already done, so repeating a command is fast.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
APT_PACKAGES = [
    "openssh-server",
    "openssh-client",
    "procps",
    "util-linux",
    "git",
    "slurmctld",
    "slurmd",
    "slurm-client",
    "munge",
    # login shells of users' hosts (tests/runners/test_hosts.py): hml must not depend on one
    "tcsh",
    "csh",
    "zsh",
]
NEEDED_TOOLS = ["ssh-keygen", "pgrep", "pkill", "flock", "git"]


def sh(*cmd: str, **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def venv(extras: str) -> None:
    """Create .venv and install hybridml[extras] unless pyproject and extras are unchanged."""
    stamp = VENV / f".hybridml-{extras}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest and PY.exists():
        return
    if not PY.exists():
        sh(sys.executable, "-m", "venv", str(VENV))
    sh(str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip")
    # torch==2.13.0 is pinned in the extras; its CPU wheel comes from the local wheel cache
    sh(str(PY), "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extras}]")
    stamp.write_text(digest)


def debian_packages() -> None:
    """The tests start real sshd hosts and a real Slurm cluster: install Debian's openssh-server,
    slurmctld, slurmd and munge when they are missing."""
    daemons = ("/usr/sbin/sshd", "/usr/sbin/slurmctld")
    if all(Path(d).exists() for d in daemons) and all(shutil.which(tool) for tool in NEEDED_TOOLS):
        return
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    if prefix and not shutil.which("sudo"):
        sys.exit("dev.py: the tests need openssh-server and Slurm; run as root or install them with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(*prefix, "apt-get", "update", "-q", env=env)
    sh(*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES, env=env)


def demo() -> int:
    venv("train")
    job = ROOT / "examples" / "digits" / "job.yaml"
    rc = subprocess.run([str(VENV / "bin" / "hml"), "submit", str(job)]).returncode
    print(
        "\nLook at the run in the MLflow UI: open the address that\n"
        f"  {VENV}/bin/hml ui\n"
        "prints (experiment 'digits'; the tracking server hml keeps for this store, not a second one)."
    )
    return rc


CHECKS = [
    ["ruff", "check", "."],
    ["ruff", "format", "--check", "."],
    ["lint-imports"],  # the layers: pyproject's [tool.importlinter] contracts
    ["mypy"],  # the runner's spec, profile, backends and the leaf package, strict
]


def checks(which: list[list[str]]) -> int:
    """Lint, format, architecture and type checks: the same in CI as here, before any test."""
    for check in which:
        print("+", " ".join(check), flush=True)
        rc = subprocess.run([str(VENV / "bin" / check[0]), *check[1:]], cwd=ROOT).returncode
        if rc:
            return rc
    return 0


FAST_CHECKS = CHECKS[:2]
"""The edit loop's checks: ruff takes a second; the contracts and mypy wait for the full run."""


def workers() -> str:
    """pytest-xdist workers: two a core this process may use. Most tests wait on servers, sshd
    hosts and jobs rather than compute (on 2 cores: 684 s with 2 workers, 582 s with 4).
    ``-n auto`` would count physical cores where psutil is installed, one on many small VMs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return str(2 * cores)


def k8s_bed() -> None:
    """The Kubernetes bed's binaries (etcd, the control plane, kwok), built from the Go module
    proxy once per machine into ~/.cache/hybridml (tests/k8sbed.py): minutes cold, nothing after."""
    if not shutil.which("go"):
        sys.exit(
            "dev.py: the Kubernetes test bed needs Go 1.26: apt-get install golang-go or Go's own tarball"
        )
    sh(str(PY), "-m", "tests.k8sbed", "build", cwd=ROOT)


def pulumi_engine() -> None:
    """The real Pulumi engine for the tests (tests/pulumibed.py): the ``pulumi`` CLI and the
    Kubernetes provider, built from the Go module proxy once per machine, and our own Python
    language host (tests/pulumihost.py), into ~/.cache/hybridml beside the bed's binaries (a
    ``pulumi`` on PATH is used as it is; then only the provider is built). Cold about 16 min of
    CPU (26 min on 2 busy cores), with warm Go caches 2.5 min, cached nothing
    (docs/runbooks/pulumi-engine.md)."""
    if not shutil.which("go"):
        sys.exit("dev.py: the Pulumi engine for the tests needs Go 1.26: apt-get install golang-go")
    sh(str(PY), "-m", "tests.pulumibed", "build", cwd=ROOT)


def test(args: list[str]) -> int:
    """Every check and test (CI runs this), ``--fast`` the edit loop, or pytest with ``args``.

    ``--fast`` sets ``HML_TEST_TIER=fast``: a test that starts a server without its ``server``
    mark then fails instead of slowing the loop (tests/tier.py)."""
    debian_packages()
    venv("all")
    if args[:1] != ["--fast"]:  # the edit loop starts no bed and runs no engine
        k8s_bed()
        pulumi_engine()
    env = dict(os.environ)
    if args[:1] == ["--fast"]:
        env["HML_TEST_TIER"] = "fast"
        if checks(FAST_CHECKS):
            return 1
        args = ["-n", workers(), "-m", "not server and not slow", *(args[1:] or ["tests"])]
    elif not args:
        if checks(CHECKS):
            return 1
        args = ["-n", workers(), "tests"]
    return subprocess.run([str(PY), "-m", "pytest", *args], cwd=ROOT, env=env).returncode


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    return demo() if sys.argv[1] == "demo" else test(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
