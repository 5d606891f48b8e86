"""Real OS users for the shared-machine tests: a victim who runs ``hml`` and an attacker who
tries to reach the victim's runs, files and credentials from the same machine.

Why real users: what keeps one account from another is the kernel (file modes, peer
credentials, ``/proc`` rules), and only a second uid exercises it. Each pytest worker has its
own pair (``hmlv-<worker>``, ``hmla-<worker>``), made once with ``useradd`` and reused, so
killing every process of a user after a test never touches another worker's test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _reachable(path: Path) -> None:
    """Let other users traverse (never list) the directories above ``path``: the interpreter
    and the checkout may live under ``/root`` (mode 0700) on a CI machine."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


@dataclass
class User:
    """An OS user and a private working area of this test (``work``, mode 0700, theirs)."""

    name: str
    uid: int
    gid: int
    home: Path
    work: Path

    @property
    def env(self) -> dict[str, str]:
        """A login-like environment of their own: no root state, no developer's agent or
        local server (``HML_HOME`` and the runtime dir are this test's)."""
        runtime = self.work / "run"
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HML_HOME": str(self.work / "hml-home"),
            "XDG_RUNTIME_DIR": str(runtime),
            "TMPDIR": str(self.work / "tmp"),
        }

    def run(
        self,
        argv: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as this user, from a clean environment (``runuser``, as root)."""
        full = {**self.env, **(env or {})}
        return subprocess.run(
            ["runuser", "-u", self.name, "--", "env", "-i", *(f"{k}={v}" for k, v in full.items()), *argv],
            cwd=cwd or self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def hml(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run([str(BIN / "hml"), *args], **kw)  # type: ignore[arg-type]

    def python(self, code: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """Python code as this user (the venv's interpreter: an attacker has mlflow too)."""
        return self.run([str(BIN / "python"), "-c", code, *args], **kw)  # type: ignore[arg-type]

    def kill_all(self) -> None:
        subprocess.run(["pkill", "-KILL", "-u", str(self.uid)], capture_output=True)


def _user(role: str) -> Iterator[User]:
    _reachable(Path(sys.executable).resolve().parent)
    _reachable(BIN)
    _reachable(ROOT)
    entry = ensure_user(f"hml{role}-{_worker()}"[:32])
    work = Path(entry.pw_dir) / f"t-{uuid.uuid4().hex[:8]}"
    for d in (work, work / "run", work / "tmp"):
        d.mkdir(mode=0o700)
        os.chown(d, entry.pw_uid, entry.pw_gid)
    user = User(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), work)
    try:
        yield user
    finally:
        user.kill_all()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def victim() -> Iterator[User]:
    """The user whose runs, files and credentials the attacker goes after."""
    yield from _user("v")


@pytest.fixture
def attacker() -> Iterator[User]:
    """Another local account on the same machine, with a shell and the same tools."""
    yield from _user("a")
