"""Finding and loading the environment profile (the contract itself is ``hmlkit.profile``).

Looked up from ``--config``, then ``$HML_CONFIG``, then ``./hybridml.yaml``; with none, the
embedded default applies (target ``local``, an MLflow SQLite store under ``$HML_HOME``), so a
laptop needs nothing started by hand. The stacks export this same shape as ``runnerProfile``.

A profile says where runs, and the tracking credentials with them, go, so it is read only
from a file no other account can write (as git's ``safe.directory``): ``./hybridml.yaml`` in
a directory others can write (a shared scratch directory, ``/tmp``) is ignored with a warning,
and a ``--config`` or ``$HML_CONFIG`` file another account could rewrite is refused (exit 2).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
from pathlib import Path

from hmlkit.errors import ProfileError
from hmlkit.profile import Profile, parse_profile
from hmlkit.validation import parse_yaml
from runners.state.paths import home

PROFILE_FILE = "hybridml.yaml"


def tracking_uri(profile: Profile) -> str:
    """The profile's tracking server, or the embedded default's SQLite store."""
    return profile.tracking_uri or f"sqlite:///{home() / 'mlflow.db'}"


def _account(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _private_group(gid: int) -> bool:
    """A group of this user alone (user private groups, where ``umask 002`` is the norm)."""
    try:
        me, group = pwd.getpwuid(os.getuid()), grp.getgrgid(gid)
    except KeyError:
        return False
    return gid == me.pw_gid and group.gr_name == me.pw_name and set(group.gr_mem) <= {me.pw_name}


def trust_problem(st: os.stat_result, what: str) -> str | None:
    """Why another account could change what this file or directory says; None when none can.

    Its owner is this user, or root (who commands every account anyway); nobody else may write
    it but a group that is this user's own."""
    if st.st_uid not in (os.getuid(), 0):
        return f"{what} belongs to {_account(st.st_uid)}"
    if st.st_mode & stat.S_IWOTH:
        return f"{what} is writable by others"
    if st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid):
        try:
            name = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            name = str(st.st_gid)
        return f"{what} is writable by group {name}"
    return None


def _read(path: Path, source: str) -> tuple[os.stat_result, str] | None:
    """The file's status and text, read through one descriptor (what was checked is what is
    read); None when it is not a regular file. ``O_NONBLOCK``: a planted FIFO cannot hang us."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            return st, fh.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProfileError(source, [f"cannot read file: {exc}"]) from None


def _explicit(path: Path) -> Profile:
    """``--config`` or ``$HML_CONFIG``: the user's choice, still refused if another account could
    rewrite it (then it, not the user, would choose where runs and credentials go)."""
    source = str(path)
    try:
        found = _read(path, source)
    except FileNotFoundError:
        raise ProfileError(source, ["file not found"]) from None
    except OSError as exc:
        raise ProfileError(source, [f"cannot read file: {exc}"]) from None
    if found is None:
        raise ProfileError(source, ["not a regular file"])
    st, text = found
    if problem := trust_problem(st, "it"):
        fix = f"chmod go-w {path}" if st.st_uid in (os.getuid(), 0) else "copy it to a file of your own"
        raise ProfileError(source, [f"{problem}, so another account could choose where your runs go; {fix}"])
    return parse_profile(parse_yaml(text, source, ProfileError), source)


def _local() -> Profile:
    """``./hybridml.yaml`` if this directory and the file are the user's alone, else the default."""
    shown, source = f"./{PROFILE_FILE}", str(Path.cwd() / PROFILE_FILE)
    if not os.path.lexists(PROFILE_FILE):
        return Profile()
    problem = trust_problem(os.stat("."), os.getcwd())  # "." is where we stand, whatever its name now
    text = ""
    if problem is None:
        try:
            found = _read(Path(PROFILE_FILE), source)
        except FileNotFoundError:
            return Profile()
        except OSError as exc:
            raise ProfileError(source, [f"cannot read file: {exc}"]) from None
        if found is None:  # a directory or a device of that name: not a profile
            return Profile()
        st, text = found
        problem = trust_problem(st, shown)
    if problem:
        print(
            f"hml: warning: ignoring {shown}: {problem}, who could choose where your runs go "
            "(move it, or pass --config)",
            file=sys.stderr,
        )
        return Profile()
    return parse_profile(parse_yaml(text, source, ProfileError), source)


def load_profile(explicit: str | None = None) -> Profile:
    """Read and validate the profile, including each target's own config."""
    if explicit or os.environ.get("HML_CONFIG"):
        return _explicit(Path(explicit or os.environ["HML_CONFIG"]))
    return _local()
