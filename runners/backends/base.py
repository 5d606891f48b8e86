"""The one seam between the runner and a place that runs jobs.

A backend starts a job detached from the caller, answers whether it still runs, hands back
its output from a byte offset, and kills it. Everything else (the MLflow run, retries,
max_runtime, logs, cost) is the supervisor's and is written once for all backends.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from runners.errors import UsageError
from runners.spec import JobSpec

Handle = dict[str, Any]
"""Whatever a backend needs to find its job again from a new process; JSON-serialisable."""


class Feature(StrEnum):
    GPUS = "gpus"
    MULTI_NODE = "multi-node"


class TargetConfig(BaseModel):
    """Base of each backend's config model: rejects unknown keys, names the kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str


@dataclass(frozen=True)
class LaunchRequest:
    run_id: str
    spec: JobSpec
    workdir: Path
    env: dict[str, str]
    secrets: dict[str, str]
    attempt: int
    state_dir: Path
    """A directory of this run on the submitting machine, for backend scratch files."""


@dataclass(frozen=True)
class JobState:
    running: bool
    exit_code: int | None = None
    detail: str = ""
    """Why the job ended other than by exiting (host lost, instance terminated)."""


@dataclass
class Usage:
    """What the job occupies, for cost: node count, GPUs per node, price of one GPU hour."""

    nodes: int = 1
    gpus_per_node: int = 0
    gpu_hour_usd: float = 0.0
    hosts: list[str] = field(default_factory=list)


class Backend(abc.ABC):
    kind: ClassVar[str]
    Config: ClassVar[type[TargetConfig]]
    unsupported: ClassVar[dict[Feature, str]] = {}
    """Capability gaps as data: feature -> why; checked in one place before launch."""

    def __init__(self, name: str, config: TargetConfig) -> None:
        self.name = name
        self.config = config

    @classmethod
    def check(cls, spec: JobSpec, target: str = "") -> None:
        """Refuse, before anything starts, a job that needs what this kind cannot do."""
        wants = {Feature.MULTI_NODE: spec.num_nodes > 1, Feature.GPUS: spec.resources.gpus > 0}
        gaps = [f"{f.value}: {why}" for f, why in cls.unsupported.items() if wants[f]]
        if gaps:
            raise UsageError(f"target {target or cls.kind!r} cannot run this job: " + "; ".join(gaps))

    def preflight(self, spec: JobSpec, workdir: Path) -> None:
        """Cheap checks at submit time (host keys, workdir size) so bad input fails before a run exists."""

    @abc.abstractmethod
    def launch(self, request: LaunchRequest) -> tuple[Handle, Usage]:
        """Start the job detached (it survives the caller) and return how to find it."""

    @abc.abstractmethod
    def poll(self, handle: Handle) -> JobState:
        """The job's real state now; raises BackendError when the target cannot be asked."""

    @abc.abstractmethod
    def read_output(self, handle: Handle) -> bytes:
        """Output not returned before for this handle (all nodes, complete lines, node-prefixed).

        The read position lives in the handle, which the supervisor persists, so a restarted
        supervisor goes on where the last one stopped.
        """

    @abc.abstractmethod
    def cancel(self, handle: Handle) -> None:
        """Kill every process of the job; idempotent."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def trust(self, confirm: Callable[[list[tuple[str, str, str]]], bool]) -> list[tuple[str, str, str]]:
        """Record the target's host keys once ``confirm`` accepts their (host, type, fingerprint)."""
        raise UsageError(f"target kind {self.kind!r} has no host keys to trust")

    def close(self) -> None:
        """Release connections; a backend is cheap to make again."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
