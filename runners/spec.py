"""The job file: what to run, never where.

Close to SkyPilot's task YAML so users feel at home. Nothing here names a target: the same
file runs on the laptop, on-prem and on AWS; the target is chosen at submit time.
"""

from __future__ import annotations

import math
import posixpath
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from hmlkit.errors import SpecError
from hmlkit.validation import read_yaml, validate
from runners.data.manifest import input_ref_problem

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?)?\s*$", re.IGNORECASE)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")
_PARAM_KEY = re.compile(r"^[/\w.\- :]+$")
MAX_PARAM_KEY = 250
MAX_PARAM_VALUE = 6000
"""MLflow's limits (mlflow.utils.validation): a run is only opened for params it will accept."""


def param_problems(key: str, value: Any) -> list[str]:
    """Why MLflow would refuse this param, so the refusal comes before the run exists."""
    problems = []
    if not _PARAM_KEY.match(key):
        problems.append(f"{key!r}: use letters, digits, spaces and _ - . / : only")
    elif len(key) > MAX_PARAM_KEY:
        problems.append(f"{key[:20]!r}...: longer than {MAX_PARAM_KEY} characters")
    elif posixpath.normpath(key) != key or key == "." or key.startswith(("..", "/")):
        problems.append(f"{key!r}: must be a plain path-like name (no leading /, no // or ..)")
    if len(str(value)) > MAX_PARAM_VALUE:
        problems.append(f"{key!r}: value longer than {MAX_PARAM_VALUE} characters; log it as an artifact")
    return problems


def memory_mib(value: str) -> int:
    """Whole MiB (rounded up) from ``'16GB'`` (decimal), ``'16GiB'`` (binary), ``'1T'`` or ``16`` (GB).

    The one reading of ``resources.memory``, for Slurm's ``--mem`` and EC2's ``SizeInMiB`` alike.
    """
    match = _MEMORY.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size")
    unit = (match.group(2) or "G").upper()
    power = "KMGT".index(unit[0]) + 1
    base = 1024 if "I" in unit else 1000
    return math.ceil(float(match.group(1)) * float(base) ** power / 2**20)


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"2h"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90, '30m' or '2h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; use e.g. 90, '30m' or '2h'")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be a positive duration")
    return seconds


def _input_ref(value: str) -> str:
    problem = input_ref_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    cpus: Annotated[float, Field(gt=0, le=1024)] | None = None
    memory: str | None = Field(default=None, description="e.g. '16GB'")
    accelerator: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not _MEMORY.match(str(value)):
            raise ValueError(f"{value!r} is not a size; use e.g. '16GB' or 16 (GB)")
        return str(value).strip()


Scalar = str | int | float | bool


class JobSpec(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    experiment: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    workdir: str = "."
    resources: Resources = Resources()
    num_nodes: Annotated[int, Field(ge=1, le=256)] = 1
    setup: str | None = None
    run: Annotated[str, Field(min_length=1)]
    envs: dict[Annotated[str, Field(pattern=ENV_NAME_PATTERN)], Scalar] = {}
    params: dict[str, Scalar] = {}
    secrets: list[Annotated[str, Field(pattern=ENV_NAME_PATTERN)]] = []
    inputs: dict[
        Annotated[str, Field(pattern=ENV_NAME_PATTERN)], Annotated[str, AfterValidator(_input_ref)]
    ] = {}
    """Datasets the job reads, by the name of its ``HML_INPUT_<NAME>`` directory."""
    max_runtime: float | None = Field(default=None, description="seconds, or '30m', '2h'")
    retries: Annotated[int, Field(ge=0, le=10)] = 0
    max_cost_usd: Annotated[float, Field(ge=0)] | None = None

    @field_validator("max_runtime", mode="before")
    @classmethod
    def _runtime(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("envs")
    @classmethod
    def _envs(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        reserved = sorted(k for k in value if k.startswith("HML_") or k in RESERVED_ENV)
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: set by hml for every job; remove it")
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        problems = [p for k, v in value.items() for p in param_problems(k, v)]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str]) -> dict[str, str]:
        upper = [k.upper() for k in value]
        problems = [
            f"{k}: HML_INPUT_{k.upper()} twice; rename one" for k in sorted(set(upper)) if upper.count(k) > 1
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name


def _set_path(data: dict[str, Any], dotted: str, raw: str) -> str | None:
    """Apply one ``--set key=value``; a problem line, or None.

    A job field goes by its dotted path, any other bare key is a param; the value is read as a
    YAML scalar, so ``lr=0.1`` is a number and ``name='007'`` a string.
    """
    import yaml

    if raw.strip() == "":
        return f"{dotted}: empty value; give one, e.g. --set {dotted}=0.01 (an empty string: {dotted}='')"
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = dotted.split(".")
    if parts[0] == "params" and len(parts) > 1:
        parts = ["params", ".".join(parts[1:])]  # a param's own name may hold dots
    elif len(parts) == 1 and dotted not in JobSpec.model_fields:
        parts = ["params", dotted]
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return f"{dotted}: {part} is not a mapping"
        node = child
    node[parts[-1]] = value
    return None


def load_job(path: str | Path, overrides: list[str] | None = None) -> tuple[JobSpec, Path]:
    """Validate a job file (and ``--set`` overrides); return the spec and its absolute workdir."""
    path = Path(path)
    data = read_yaml(path)
    problems = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"{item!r}: expected key=value, e.g. --set lr=0.01")
        elif isinstance(data, dict):
            problem = _set_path(data, key.strip(), value)
            if problem:
                problems.append(problem)
    if problems:
        raise SpecError("--set", problems)
    spec = validate(JobSpec, data, str(path))
    workdir = (path.resolve().parent / spec.workdir).resolve()
    if not workdir.is_dir():
        raise SpecError(str(path), [f"workdir: {workdir} is not a directory"])
    return spec, workdir
