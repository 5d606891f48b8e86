"""The registry of target kinds: one line adds a backend, imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from runners.errors import ProfileError, UsageError

REGISTRY: dict[str, tuple[str, str | None]] = {
    # kind: (module:class, the extra that installs its SDK)
    "local": ("runners.backends.local:LocalBackend", None),
    "ssh": ("runners.backends.ssh:SshBackend", "ssh"),
}
PLANNED = {
    # kinds a profile may name (the stacks export them) that this release cannot run yet
    "aws": "the aws target is not in this release yet; submit to an ssh or local target",
}


def backend_class(kind: str) -> type:
    if kind in PLANNED:
        raise UsageError(f"target kind {kind!r}: {PLANNED[kind]}")
    if kind not in REGISTRY:
        raise UsageError(f"unknown target kind {kind!r}; known kinds: {', '.join(REGISTRY)}")
    target, extra = REGISTRY[kind]
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'hybridml[{extra}]'" if extra else "reinstall hybridml"
        raise UsageError(f"target kind {kind!r} needs {exc.name}; install it: {hint}") from exc
    return getattr(module, cls_name)


def validate_target(raw: Any) -> list[str]:
    """Problems with one target's config, as ``field: message`` lines (empty when valid)."""
    from runners.validation import format_errors

    if not isinstance(raw, dict) or "kind" not in raw:
        return [f"kind: required; one of: {', '.join(REGISTRY)}"]
    if raw["kind"] in PLANNED:
        return []  # loads, so the profile's other targets work; using it says why not
    if raw["kind"] not in REGISTRY:
        return [f"kind: {raw['kind']!r} is not one of: {', '.join(REGISTRY)}"]
    try:
        backend_class(raw["kind"]).Config.model_validate(raw)
    except ValidationError as exc:
        return format_errors(exc)
    except UsageError as exc:
        return [f"kind: {exc}"]
    return []


def make_backend(name: str, raw: dict[str, Any]) -> Any:
    from runners.backends.base import Backend

    cls: type[Backend] = backend_class(raw["kind"])
    try:
        return cls(name, cls.Config.model_validate(raw))
    except ValidationError as exc:
        raise ProfileError(f"targets.{name}", [str(e) for e in exc.errors()]) from None
