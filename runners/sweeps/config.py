"""A sweep's search, as its SPACE.yaml (or the job file's ``sweep:`` section) says it.

Each searched name is what ``--set`` takes: a param (``lr``) or a job field by its dotted
path (``resources.gpus``), so a trial is the job submitted with its values as overrides.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hmlkit.errors import SpecError
from hmlkit.validation import read_yaml, validate
from runners.spec import JobSpec

Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choice(_Strict):
    type: Literal["choice"]
    values: list[Scalar] = Field(min_length=1)


class Int(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> Int:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError("log: needs low >= 1")
        return self


class Uniform(_Strict):
    type: Literal["uniform", "loguniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _range(self) -> Uniform:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform: needs low > 0")
        return self


Dimension = Annotated[Choice | Int | Uniform, Field(discriminator="type")]


class Objective(_Strict):
    metric: str = Field(min_length=1, max_length=250)
    """The MLflow metric each trial logs (by step, for the pruner); its last value is the result."""
    direction: Literal["minimize", "maximize"] = "minimize"


class Pruner(_Strict):
    kind: Literal["none", "median", "hyperband"] = "median"
    startup_trials: int = Field(default=3, ge=0)
    """median: trials that run to the end before any is pruned."""
    warmup_steps: int = Field(default=0, ge=0)
    """median: steps a trial always runs."""
    min_steps: int = Field(default=1, ge=1)
    """hyperband: the fewest steps a trial runs (its min_resource)."""


class SweepConfig(_Strict):
    space: dict[Annotated[str, Field(min_length=1)], Dimension] = Field(min_length=1)
    objective: Objective
    max_trials: int = Field(default=20, ge=1, le=10000)
    parallel: int = Field(default=2, ge=1, le=1000)
    """Trials live at once (waiting for room counts): ``--target auto`` spills those the first
    target cannot hold to the next."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = None
    pruner: Pruner = Pruner(kind="none")
    max_cost_usd: float | None = Field(default=None, gt=0)
    """No trial starts whose worst case could take the sweep past this; running trials are
    stopped once the sweep's actual spend passes it."""

    @model_validator(mode="before")
    @classmethod
    def _pruner_word(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("pruner"), str):
            return {**data, "pruner": {"kind": data["pruner"]}}
        return data

    @model_validator(mode="after")
    def _grid(self) -> SweepConfig:
        if self.sampler == "grid":
            continuous = [k for k, d in self.space.items() if isinstance(d, Uniform)]
            if continuous:
                raise ValueError(
                    f"sampler grid: {', '.join(continuous)} is continuous; use type choice or int"
                )
        names = [k for k in self.space if k.split(".")[0] in ("sweep", "team", "name", "run")]
        if names:
            raise ValueError(f"space: {', '.join(names)} cannot be searched (it names the run itself)")
        return self

    def grid(self) -> dict[str, list[Scalar]]:
        out: dict[str, list[Scalar]] = {}
        for name, d in self.space.items():
            if isinstance(d, Choice):
                out[name] = list(d.values)
            elif isinstance(d, Int):
                out[name] = list(range(d.low, d.high + 1, d.step))
        return out

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())


def load(job_path: str, space_path: str | None, overrides: dict[str, Any]) -> SweepConfig:
    """The sweep: SPACE.yaml when given, else the job file's ``sweep:`` section; ``overrides``
    (command-line flags) win over either."""
    if space_path:
        data, source = read_yaml(Path(space_path)), space_path
    else:
        raw = read_yaml(Path(job_path))
        data = raw.get("sweep") if isinstance(raw, dict) else None
        source = f"{job_path}: sweep"
        if data is None:
            raise SpecError(
                job_path, ["sweep: no search given; add a sweep: section or pass --space SPACE.yaml"]
            )
    if not isinstance(data, dict):
        raise SpecError(source, ["(top level): expected a mapping (space, objective, max_trials...)"])
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    config = validate(SweepConfig, data, source)
    unknown = [k for k in config.space if "." in k and k.split(".")[0] not in JobSpec.model_fields]
    if unknown:
        raise SpecError(
            source,
            [f"space.{k}: {k.split('.')[0]} is no job field; a param's name has no dots" for k in unknown],
        )
    return config


def override(name: str, value: Scalar) -> str:
    """A trial's value as a ``--set`` item that reads back as the same type (YAML scalars)."""
    import json

    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text:  # YAML reads 1e-05 as a string, 1.0e-05 as a number
            text = text.replace("e", ".0e")
        return f"{name}={text}"
    return f"{name}={json.dumps(value)}"
