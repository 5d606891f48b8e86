"""The environment profile: the one tracking server and the named targets.

Looked up from ``--config``, then ``$HML_CONFIG``, then ``./hybridml.yaml``; with none, the
embedded default applies (target ``local``, an MLflow SQLite store under ``$HML_HOME``), so a
laptop needs nothing started by hand. The stacks export this same shape as ``runnerProfile``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runners.errors import ProfileError
from runners.paths import home
from runners.validation import read_yaml, validate

PROFILE_FILE = "hybridml.yaml"


class Vault(BaseModel):
    """Where secrets come from: ``HML_SECRET_<NAME>`` variables, or AWS Secrets Manager."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["env", "aws"] = "env"
    prefix: str = ""
    region: str | None = None


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = None
    default_target: str | None = None
    vault: Vault | None = None
    probe_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """How long the tracking server and each target may take to answer before submit gives up."""
    targets: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"local": {"kind": "local"}})
    source: str = Field(default="embedded default", exclude=True)

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{home() / 'mlflow.db'}"

    def target_names(self) -> list[str]:
        return list(self.targets)

    def pick(self, name: str | None) -> str:
        chosen = name or self.default_target or ("local" if "local" in self.targets else None)
        if chosen is None:
            raise ProfileError(
                self.source,
                [f"no target given and no default_target; use --target {' or '.join(self.targets)}"],
            )
        if chosen not in self.targets:
            raise ProfileError(
                self.source, [f"unknown target {chosen!r}; defined: {', '.join(self.targets)}"]
            )
        return chosen


def find_profile_path(explicit: str | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("HML_CONFIG"):
        return Path(os.environ["HML_CONFIG"])
    local = Path.cwd() / PROFILE_FILE
    return local if local.is_file() else None


def load_profile(explicit: str | None = None) -> Profile:
    """Read and validate the profile, including each target's own config."""
    from runners.backends import validate_target

    path = find_profile_path(explicit)
    if path is None:
        return Profile()
    data = read_yaml(path, ProfileError)
    profile = validate(Profile, data, str(path), ProfileError)
    profile.source = str(path)
    if not profile.targets:
        raise ProfileError(str(path), ["targets: define at least one target, e.g. local: {kind: local}"])
    problems = []
    for name, raw in profile.targets.items():
        problems += [f"targets.{name}.{p}" for p in validate_target(raw)]
    if profile.default_target and profile.default_target not in profile.targets:
        problems.append(
            f"default_target: {profile.default_target!r} is not one of: {', '.join(profile.targets)}"
        )
    if problems:
        raise ProfileError(str(path), problems)
    return profile
