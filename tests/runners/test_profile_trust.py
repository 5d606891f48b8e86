"""The profile is read only from files no other account can write (runners/profile.py).

``./hybridml.yaml`` in a directory others can write, or a file another account owns or can
write, is ignored with a warning (the embedded default applies); ``--config``/``$HML_CONFIG``
naming such a file is refused (exit 2). These tests run as whoever runs the suite (root on CI:
root's own files are its own); tests/security/test_isolation.py runs the same as two users.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from pathlib import Path

import pytest
import yaml

from runners.profile import trust_problem
from tests.runners.helpers import hml

THEIRS = "http://127.0.0.1:9/theirs"


def _targets(cwd: Path, *args: str, **env: str):
    out = hml(*args, "targets", "-o", "json", cwd=cwd, env={"HML_AGENT": "0", **env}, timeout=60)
    return out, (json.loads(out.stdout) if out.returncode == 0 else None)


def _profile_dir(tmp_path: Path, mode: int = 0o755, file_mode: int = 0o644) -> Path:
    here = tmp_path / "project"
    here.mkdir()
    (here / "hybridml.yaml").write_text(yaml.safe_dump({"tracking_uri": THEIRS}))
    (here / "hybridml.yaml").chmod(file_mode)
    here.chmod(mode)
    return here


def test_a_profile_of_ones_own_is_read(tmp_path):
    out, shown = _targets(_profile_dir(tmp_path))
    assert out.returncode == 0, out.stderr
    assert shown["tracking_uri"] == THEIRS and "warning" not in out.stderr


@pytest.mark.parametrize(
    ("mode", "file_mode", "why"),
    [
        (0o777, 0o644, "is writable by others"),
        (0o1777, 0o644, "is writable by others"),  # sticky (/tmp): anyone may still plant the file
        (0o755, 0o666, "./hybridml.yaml is writable by others"),
    ],
)
def test_a_profile_others_could_write_is_ignored_with_the_reason(tmp_path, hml_home, mode, file_mode, why):
    here = _profile_dir(tmp_path, mode, file_mode)
    out, shown = _targets(here)
    assert out.returncode == 0, out.stderr
    assert shown["tracking_uri"] == f"sqlite:///{hml_home / 'mlflow.db'}"  # the embedded default
    assert "hml: warning: ignoring ./hybridml.yaml: " in out.stderr and why in out.stderr
    assert "(move it, or pass --config)" in out.stderr
    if mode & 0o002:
        assert f"{here} is writable by others" in out.stderr


def test_a_profile_owned_by_another_account_is_ignored(tmp_path, hml_home):
    here = _profile_dir(tmp_path)
    nobody = pwd.getpwnam("nobody")
    os.chown(here / "hybridml.yaml", nobody.pw_uid, -1)
    out, shown = _targets(here)
    assert shown["tracking_uri"] != THEIRS
    assert "./hybridml.yaml belongs to nobody" in out.stderr
    out, _ = _targets(tmp_path, "--config", str(here / "hybridml.yaml"))
    assert (
        out.returncode == 2
        and "belongs to nobody" in out.stderr
        and "copy it to a file of your own" in out.stderr
    )
    assert "Traceback" not in out.stderr


def test_an_explicit_profile_others_can_write_is_refused(tmp_path):
    here = _profile_dir(tmp_path, file_mode=0o666)
    path = here / "hybridml.yaml"
    for args, env in ((["--config", str(path)], {}), ([], {"HML_CONFIG": str(path)})):
        out, _ = _targets(tmp_path, *args, **env)
        assert out.returncode == 2, out.stderr
        assert f"hml: error: {path}: it is writable by others" in out.stderr
        assert f"chmod go-w {path}" in out.stderr and "Traceback" not in out.stderr
    path.chmod(0o644)  # the fix it names: then it is read, in a directory others may write too
    here.chmod(0o777)
    out, shown = _targets(tmp_path, "--config", str(path))
    assert out.returncode == 0 and shown["tracking_uri"] == THEIRS, out.stderr


def test_a_planted_fifo_does_not_hang_hml(tmp_path, hml_home):
    here = tmp_path / "project"
    here.mkdir()
    os.mkfifo(here / "hybridml.yaml")
    out, shown = _targets(here)
    assert out.returncode == 0 and shown["tracking_uri"].startswith("sqlite:///"), out.stderr
    out, _ = _targets(tmp_path, "--config", str(here / "hybridml.yaml"))
    assert out.returncode == 2 and "not a regular file" in out.stderr


def test_group_write_counts_only_for_ones_private_group(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o664)
    me = pwd.getpwuid(os.getuid())
    private = grp.getgrgid(me.pw_gid)
    assert private.gr_name == me.pw_name  # the user private group (root's is 'root')
    assert trust_problem(path.stat(), "f") is None
    shared = next(g for g in grp.getgrall() if g.gr_gid != me.pw_gid)
    os.chown(path, -1, shared.gr_gid)
    assert trust_problem(path.stat(), "f") == f"f is writable by group {shared.gr_name}"
    path.chmod(0o644)
    assert trust_problem(path.stat(), "f") is None
