"""The job file's continuous-training sections: ``model:`` (what to register, how to judge it)
and ``triggers:`` (what starts a run without a person).

They live apart from ``runners.spec`` so the job spec gains two fields, not two concerns; the
registry (``runners.registry``) and the watcher (``runners.runs.triggers``) read them. A cron
expression is parsed here, with the standard library: five fields, ``*``, lists, ranges and
steps, which is what a training schedule needs (no ``@reboot``, no seconds).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runners.data.manifest import DATASET_NAME_PATTERN

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
METRIC_PATTERN = r"^[/\w.\- :]+$"
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 6),
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """Register the run's logged model as ``name`` and judge it on ``metric`` against the champion."""

    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
    """The registered model (created on first use)."""
    metric: Annotated[str, Field(pattern=METRIC_PATTERN, max_length=250)]
    """A metric the job logs on its run; the gate compares the candidate's with the champion's."""
    direction: Literal["maximize", "minimize"] = "maximize"
    threshold: float | None = None
    """The worst value a model may have to be promoted at all (maximize: at least; minimize: at most)."""
    margin: Annotated[float, Field(ge=0)] = 0.0
    """How much better than the champion a candidate must be (in the metric's units)."""
    logged_model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """Which logged model of the run to register, by name; default: the run's only one."""


class Trigger(_Strict):
    """One reason to train: a new snapshot version of ``dataset``, or a ``cron`` schedule (UTC)."""

    dataset: Annotated[str, Field(pattern=DATASET_NAME_PATTERN)] | None = None
    input: str | None = None
    """The job input pinned to the new version; default: the one input that names ``dataset``."""
    cron: str | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            parse_cron(value)
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        if (self.dataset is None) == (self.cron is None):
            raise ValueError("give either dataset: NAME (a new snapshot version) or cron: '0 3 * * *'")
        if self.cron is not None and self.input is not None:
            raise ValueError("input: only a dataset trigger pins an input; remove it")
        return self

    @property
    def kind(self) -> str:
        return f"dataset {self.dataset}" if self.dataset else f"cron '{self.cron}'"


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if not match:
            raise ValueError(f"cron {name} {part!r}: use *, N, N-M, lists (1,15) or steps (*/10)")
        step = int(match.group(4) or 1)
        start, end = (low, high) if match.group(1) == "*" else (int(match.group(2)), int(match.group(3) or 0))
        if match.group(1) != "*" and match.group(3) is None:
            end = high if match.group(4) else start
        if not low <= start <= end <= high or step < 1:
            raise ValueError(f"cron {name} {part!r}: values in {low}..{high}, ranges low to high")
        out.update(range(start, end + 1, step))
    return frozenset(out)


def parse_cron(expression: str) -> tuple[frozenset[int], ...]:
    """The five fields' allowed values; ValueError naming the bad field and the fix."""
    parts = expression.split()
    if len(parts) != 5:
        raise ValueError(f"{expression!r}: five fields, minute hour day-of-month month weekday (0 3 * * *)")
    return tuple(_field(p, *spec) for p, spec in zip(parts, _CRON_FIELDS, strict=True))


def last_fire(expression: str, now: datetime, within: timedelta) -> datetime | None:
    """The latest minute at or before ``now`` (and within ``within`` of it) that the schedule names.

    Day of month and weekday combine as cron does: either matches when both are restricted."""
    minutes, hours, days, months, weekdays = parse_cron(expression)
    fields = expression.split()
    both = fields[2] != "*" and fields[4] != "*"
    start = t = now.replace(second=0, microsecond=0)
    while start - t <= within:
        day_ok = t.day in days, (t.weekday() + 1) % 7 in weekdays
        if (
            t.minute in minutes
            and t.hour in hours
            and t.month in months
            and (any(day_ok) if both else all(day_ok))
        ):
            return t
        t -= timedelta(minutes=1)
    return None
