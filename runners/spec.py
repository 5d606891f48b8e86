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

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from hmlkit.errors import SpecError
from hmlkit.profile import TEAM_PATTERN
from hmlkit.validation import error_items, read_yaml, validate
from runners.data.manifest import input_ref_problem
from runners.envs.model import Environment
from runners.training import ModelSpec, Trigger

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


def _scalar(value: Any) -> Any:
    """One line for a value no param or variable can hold, where the union would give one per type."""
    if not isinstance(value, str | int | float | bool):
        kinds = {list: "a list", dict: "a mapping", type(None): "empty (null)"}
        kind = kinds.get(type(value), f"a {type(value).__name__}")
        raise ValueError(f"expected a string, number or true/false, not {kind}; quote it to pass it as text")
    return value


Scalar = Annotated[str | int | float | bool, BeforeValidator(_scalar)]


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
    model: ModelSpec | None = None
    """Register the logged model with its lineage and gate it against the champion (docs/models.md)."""
    triggers: list[Trigger] = []
    """What makes ``hml watch`` train it: new snapshot versions, a schedule (docs/models.md)."""
    team: Annotated[str, Field(pattern=TEAM_PATTERN)] | None = None
    """Whose budget the run spends (the profile's ``budgets``); unset: the target's telemetry team."""
    sweep: dict[str, Any] | None = None
    """``hml sweep``'s search (runners/sweeps/config.py validates it); ``hml submit`` runs the job once."""
    environment: Environment | None = None
    """The job's Python packages, locked at submit and built once per host (runners/envs)."""

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


def _set_path(data: dict[str, Any], dotted: str, raw: str) -> str:
    """Apply one ``--set key=value``; the dotted path of the field it set (ValueError: why not).

    A job field goes by its dotted path, any other bare key is a param; the value is read as a
    YAML scalar, so ``lr=0.1`` is a number and ``name='007'`` a string.
    """
    import yaml

    if raw.strip() == "":
        raise ValueError(
            f"{dotted}: empty value; give one, e.g. --set {dotted}=0.01 (an empty string: {dotted}='')"
        )
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
            raise ValueError(f"{dotted}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value
    return ".".join(parts)


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        JobSpec.model_validate(data)
    except ValidationError as exc:
        return error_items(exc)
    return []


def _culprit(path: str, message: str, set_by: dict[str, str], own: list[tuple[str, str]]) -> str | None:
    """The ``--set`` a problem at ``path`` comes from, or None: the file's own.

    The override of that field (or of one above it) if any; for a problem of a whole mapping
    (``params``: a bad key), one it did not have without the overrides, the override inside
    it, preferably the one the message names."""
    exact = [item for field, item in set_by.items() if path == field or path.startswith(f"{field}.")]
    if exact:
        return exact[-1]
    if (path, message) in own:
        return None
    inside = [item for field, item in set_by.items() if not path or field.startswith(f"{path}.")]
    named = [item for item in inside if item.partition("=")[0].split(".")[-1].strip() in message]
    chosen = named or inside
    return chosen[-1] if chosen else None


def _validated(data: Any, source: str, original: Any, set_by: dict[str, str]) -> JobSpec:
    """The job as overridden; each problem blamed on the ``--set`` that brought it, else the file."""
    if not set_by:
        return validate(JobSpec, data, source)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = error_items(exc)
    own = _problems(original)
    by_source: dict[str, list[str]] = {}
    for path, message in problems:
        culprit = _culprit(path, message, set_by, own)
        by_source.setdefault(source if culprit is None else f"--set {culprit}", []).append(
            f"{path or '(top level)'}: {message}"
        )
    found = list(by_source.items())
    error = SpecError(*found[-1])
    for blamed, lines in reversed(found[:-1]):
        error = SpecError(blamed, lines, error)
    raise error


def load_job(path: str | Path, overrides: list[str] | None = None) -> tuple[JobSpec, Path]:
    """Validate a job file (and ``--set`` overrides); return the spec and its absolute workdir."""
    import copy

    path = Path(path)
    data = read_yaml(path)
    original = copy.deepcopy(data)
    problems: list[str] = []
    set_by: dict[str, str] = {}  # field path: the --set item that gave it
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"{item!r}: expected key=value, e.g. --set lr=0.01")
        elif isinstance(data, dict):
            try:
                set_by[_set_path(data, key.strip(), value)] = item
            except ValueError as exc:
                problems.append(str(exc))
    if problems:
        raise SpecError("--set", problems)
    spec = _validated(data, str(path), original, set_by)
    workdir = (path.resolve().parent / spec.workdir).resolve()
    if not workdir.is_dir():
        raise SpecError(str(path), [f"workdir: {workdir} is not a directory"])
    return spec, workdir
