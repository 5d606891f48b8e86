"""What every hybridml component shares: validated args, organisation tags, child options.

Why: each component's args are checked before any resource is registered (a bad value
fails fast with the field and the allowed values, not half-way through ``pulumi up``), and
the organisation's tags are attached the same way everywhere, so the policy pack's "tags on
everything taggable" rule holds by construction rather than by care.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any, Literal

import pulumi
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from hmlkit.validation import error_items

Platform = Literal["aws", "onprem"]
"""Where a component's resources live: AWS APIs, or the on-prem cluster / S3 endpoint."""

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


class ArgsError(ValueError):
    """A component's or the stack's arguments are invalid; the message names field and fix.

    ``problems`` keeps each ``(field.path, message)`` so that callers such as the stack
    config loader can re-phrase the path in their own terms (``platform:budget.x``).
    """

    def __init__(self, model: str, problems: list[tuple[str, str]]) -> None:
        self.model = model
        self.problems = problems
        super().__init__(
            f"{model}: " + "; ".join(f"{path}: {msg}" if path else msg for path, msg in problems)
        )


_NESTING: ContextVar[int] = ContextVar("hybridml_args_nesting", default=0)


class Args(BaseModel):
    """Base for component args: unknown keys rejected, errors raised as :class:`ArgsError`."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    def __init__(self, **data: Any) -> None:
        # Pydantic calls this for nested models too: only the outermost call converts, so
        # nested errors keep their full path (``aws.pools.gpu.instance_types``).
        token = _NESTING.set(_NESTING.get() + 1)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if _NESTING.get() > 1:
                raise
            raise ArgsError(type(self).__name__, error_items(exc)) from None
        finally:
            _NESTING.reset(token)


class OrgTags(Args):
    """The organisation's cost-allocation tags, required on every taggable child."""

    team: str
    cost_center: str
    environment: str

    @field_validator("team", "cost_center", "environment")
    @classmethod
    def _label_safe(cls, value: str) -> str:
        # Kubernetes label values are the strictest consumer; AWS accepts all of these.
        if not _LABEL_VALUE.match(value):
            raise ValueError(
                f"{value!r} must be 1-63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit"
            )
        return value

    def as_tags(self, **extra: str) -> dict[str, str]:
        """The tags as a map: AWS tags, and Kubernetes labels (the keys are valid for both)."""
        return {"team": self.team, "cost-center": self.cost_center, "environment": self.environment, **extra}


class PlatformComponent(pulumi.ComponentResource):
    """A ComponentResource whose children are named ``{name}-{role}`` and parented to it."""

    def __init__(self, type_token: str, name: str, opts: pulumi.ResourceOptions | None) -> None:
        super().__init__(type_token, name, None, opts)
        self._name = name

    def child_name(self, role: str) -> str:
        return f"{self._name}-{role}"

    def child_opts(self, **kwargs: Any) -> pulumi.ResourceOptions:
        """Options for a child: parented here (the provider is inherited from the parent)."""
        return pulumi.ResourceOptions(parent=self, **kwargs)
