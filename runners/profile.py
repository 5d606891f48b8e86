"""Finding and loading the environment profile (the contract itself is ``hmlkit.profile``).

Looked up from ``--config``, then ``$HML_CONFIG``, then ``./hybridml.yaml``; with none, the
embedded default applies (target ``local``, an MLflow SQLite store under ``$HML_HOME``), so a
laptop needs nothing started by hand. The stacks export this same shape as ``runnerProfile``.
"""

from __future__ import annotations

import os
from pathlib import Path

from hmlkit.errors import ProfileError
from hmlkit.profile import Profile, parse_profile
from hmlkit.validation import read_yaml
from runners.state.paths import home

PROFILE_FILE = "hybridml.yaml"


def tracking_uri(profile: Profile) -> str:
    """The profile's tracking server, or the embedded default's SQLite store."""
    return profile.tracking_uri or f"sqlite:///{home() / 'mlflow.db'}"


def find_profile_path(explicit: str | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("HML_CONFIG"):
        return Path(os.environ["HML_CONFIG"])
    local = Path.cwd() / PROFILE_FILE
    return local if local.is_file() else None


def load_profile(explicit: str | None = None) -> Profile:
    """Read and validate the profile, including each target's own config."""
    path = find_profile_path(explicit)
    if path is None:
        return Profile()
    return parse_profile(read_yaml(path, ProfileError), str(path))
