"""The ``environment:`` section of a job file (target-agnostic: every host builds the same lock)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

LOCK_FILES = ("uv.lock", "pylock.toml")


class Environment(BaseModel):
    """What the job imports, as one of: a requirements file, a lock file, or package specs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requirements: Annotated[str, Field(min_length=1)] | None = None
    """A pip requirements file, relative to the job file; resolved with hashes at submit."""
    lock: Annotated[str, Field(min_length=1)] | None = None
    """A ``uv.lock`` (its project beside it) or ``pylock.toml`` (PEP 751), used as it pins."""
    packages: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    """Requirement specifiers, e.g. ``[numpy>=2, scikit-learn==1.5.2]``; resolved at submit."""
    python: Annotated[str, Field(pattern=r"^3\.\d{1,2}$")] | None = None
    """``"3.11"``: hosts run the job with ``python3.11``; default: their ``python3``."""

    @model_validator(mode="after")
    def _one_source(self) -> Environment:
        given = [n for n in ("requirements", "lock", "packages") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of requirements (a file), lock (uv.lock or pylock.toml) or packages "
                f"(a list); {'none' if not given else ' and '.join(given)} given"
            )
        name = (self.lock or "").rsplit("/", 1)[-1]
        if self.lock and not (name == "uv.lock" or (name.startswith("pylock.") and name.endswith(".toml"))):
            raise ValueError(f"lock: {self.lock!r} is neither a uv.lock nor a pylock.toml (PEP 751)")
        return self
