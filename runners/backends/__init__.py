"""The registry of target kinds: one line adds a backend, imported only when used.

A kind's config model is part of the profile contract (``hmlkit.profile.TARGET_KINDS``), so
a profile validates without importing any backend or its SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from hmlkit.errors import ProfileError, UsageError
from hmlkit.extras import MissingExtra
from hmlkit.profile import TARGET_KINDS
from hmlkit.validation import format_errors

if TYPE_CHECKING:
    from runners.backends.base import Backend

REGISTRY: dict[str, tuple[str, str]] = {
    # kind: module:class
    "local": ("runners.backends.local", "LocalBackend"),
    "ssh": ("runners.backends.ssh", "SshBackend"),
    "slurm": ("runners.backends.slurm", "SlurmBackend"),
    "aws": ("runners.backends.aws", "AwsBackend"),
    "kubernetes": ("runners.backends.kubernetes", "KubernetesBackend"),
}


def backend_class(kind: str) -> type[Backend[Any]]:
    if kind not in REGISTRY:
        raise UsageError(f"unknown target kind {kind!r}; known kinds: {', '.join(REGISTRY)}")
    module_name, cls_name = REGISTRY[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise MissingExtra(exc.name or module_name, f"target kind {kind!r}") from None
    cls: type[Backend[Any]] = getattr(module, cls_name)
    return cls


def make_backend(name: str, raw: dict[str, Any]) -> Backend[Any]:
    cls = backend_class(raw["kind"])
    try:
        config = TARGET_KINDS[raw["kind"]].model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(f"targets.{name}", format_errors(exc)) from None
    return cls(name, config)
