"""Real OS users for the shared-machine tests: a victim who runs ``hml`` and an attacker who
tries to reach the victim's runs, files and credentials from the same machine.

Why real users: what keeps one account from another is the kernel (file modes, peer
credentials, ``/proc`` rules), and only a second uid exercises it. Each pytest worker has its
own pair (``hmlv-<random>``, ``hmla-<random>``), made with ``useradd`` for the session and
removed after it, so killing every process of a user after a test never touches another
worker's (or another test session's) test.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _reachable(path: Path) -> None:
    """Let other users traverse (never list) the directories above ``path``: the interpreter
    and the checkout may live under ``/root`` (mode 0700) on a CI machine."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


@contextmanager
def os_user(role: str) -> Iterator[pwd.struct_passwd]:
    """A new OS user with a home and a bash login, removed (home and processes too) after."""
    name = f"hml{role}-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group", name],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(name)
    try:
        yield entry
    finally:
        subprocess.run(["pkill", "-KILL", "-u", str(entry.pw_uid)], capture_output=True)
        subprocess.run(["userdel", "--remove", name], capture_output=True)


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


def _user(entry: pwd.struct_passwd) -> Iterator[User]:
    _reachable(Path(sys.executable).resolve().parent)
    _reachable(BIN)
    _reachable(ROOT)
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


@pytest.fixture(scope="session")
def victim_account() -> Iterator[pwd.struct_passwd]:
    with os_user("v") as entry:
        yield entry


@pytest.fixture(scope="session")
def attacker_account() -> Iterator[pwd.struct_passwd]:
    with os_user("a") as entry:
        yield entry


@pytest.fixture
def victim(victim_account: pwd.struct_passwd) -> Iterator[User]:
    """The user whose runs, files and credentials the attacker goes after."""
    yield from _user(victim_account)


@pytest.fixture
def attacker(attacker_account: pwd.struct_passwd) -> Iterator[User]:
    """Another local account on the same machine, with a shell and the same tools."""
    yield from _user(attacker_account)
