"""The one seam between the runner and a place that runs jobs.

A backend starts a job detached from the caller, answers whether it still runs, hands back
its output from a byte offset, kills it, and releases what it held (teardown). Everything
else (the MLflow run, retries, max_runtime, logs, cost) is the supervisor's and is written
once for all backends.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from hmlkit.errors import UsageError
from hmlkit.profile import TargetConfig
from runners.data.inputs import Input
from runners.spec import JobSpec

HOST_LOGIN = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR")
"""What a job on this machine takes from it, as sshd gives a remote job its login's."""


class Handle(BaseModel):
    """Base of each backend's handle: how to find its job again from a new process.

    The supervisor persists it (JSON) after every change, so a restarted supervisor resumes
    where the last one stopped; only the backend that made it reads its fields.
    """

    model_config = ConfigDict(extra="forbid")


H = TypeVar("H", bound=Handle)


class Feature(StrEnum):
    GPUS = "gpus"
    MULTI_NODE = "multi-node"
    INPUTS = "inputs"


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
    inputs: tuple[Input, ...] = ()
    """The job's datasets, resolved at submit: staged on every node before the job starts."""
    environment: str | None = None
    """The job's locked environment (``runners.envs.lock``), resolved at submit: every host
    builds exactly this (once) and runs the job in it."""


@dataclass(frozen=True)
class JobState:
    running: bool
    exit_code: int | None = None
    detail: str = ""
    """Why the job ended other than by exiting (host lost, instance terminated); while it runs,
    where or why it waits (a scheduler's queue), shown by ``hml status``."""
    queued: bool = False
    """Waiting in the target's own queue (Slurm PENDING): it neither runs nor costs yet, so the
    supervisor counts max_runtime, cost and duration from when it leaves the queue."""


@dataclass
class Usage:
    """What the job occupies, and what that costs per hour of wall time.

    On-prem capacity is priced per GPU hour (an internal rate), cloud capacity per instance
    hour (what the bill says); a target sets the one that applies.
    """

    nodes: int = 1
    gpus_per_node: int = 0
    gpu_hour_usd: float = 0.0
    node_hour_usd: float = 0.0
    hosts: list[str] = field(default_factory=list)
    data_bytes: dict[str, int] = field(default_factory=dict)
    """Input bytes each host had to fetch or be sent (0: its cache held them all)."""
    data_streamed: dict[str, int] = field(default_factory=dict)
    """Of those, what the runner sent over SSH: hosts that could not reach the store."""

    def node_hours(self, seconds: float) -> float:
        return self.nodes * seconds / 3600

    def gpu_hours(self, seconds: float) -> float:
        return self.node_hours(seconds) * self.gpus_per_node

    def cost_usd(self, seconds: float) -> float:
        return round(
            self.gpu_hours(seconds) * self.gpu_hour_usd + self.node_hours(seconds) * self.node_hour_usd, 6
        )


class Backend(abc.ABC, Generic[H]):
    kind: ClassVar[str]
    Config: ClassVar[type[TargetConfig]]
    handle_type: ClassVar[type[Handle]]
    poll_interval: ClassVar[float] = 0.2
    unsupported: ClassVar[dict[Feature, str]] = {}
    """Capability gaps as data: feature -> why; checked in one place before launch."""

    def __init__(self, name: str, config: TargetConfig) -> None:
        self.name = name
        self.config = config

    @classmethod
    def check(cls, spec: JobSpec, target: str = "") -> None:
        """Refuse, before anything starts, a job that needs what this kind cannot do."""
        wants = {
            Feature.MULTI_NODE: spec.num_nodes > 1,
            Feature.GPUS: spec.resources.gpus > 0,
            Feature.INPUTS: bool(spec.inputs),
        }
        gaps = [f"{f.value}: {why}" for f, why in cls.unsupported.items() if wants[f]]
        if gaps:
            raise UsageError(f"target {target or cls.kind!r} cannot run this job: " + "; ".join(gaps))

    def preflight(self, spec: JobSpec, workdir: Path) -> None:
        """Cheap checks at submit time (host keys, workdir size) so bad input fails before a run exists."""

    @abc.abstractmethod
    def launch(self, request: LaunchRequest) -> tuple[H, Usage]:
        """Start the job detached (it survives the caller) and return how to find it."""

    @abc.abstractmethod
    def poll(self, handle: H) -> JobState:
        """The job's real state now; raises BackendError when the target cannot be asked."""

    @abc.abstractmethod
    def read_output(self, handle: H) -> bytes:
        """Output not returned before for this handle (all nodes, complete lines, node-prefixed).

        The read position lives in the handle, which the supervisor persists, so a restarted
        supervisor goes on where the last one stopped.
        """

    def wait(self, handle: H, seconds: float) -> None:
        """Return after ``seconds``, or as soon as the job may have news (output, its end): the
        supervisor sleeps here between polls, so a target that can tell wakes it at once."""
        time.sleep(seconds)

    @abc.abstractmethod
    def cancel(self, handle: H) -> None:
        """Kill every process of the job; idempotent."""

    def teardown(self, handle: H) -> None:
        """Release what the target holds for this attempt (GPU claims, instances, allocations).

        Called once the attempt has ended, whatever the end; idempotent, so a restarted
        supervisor may call it again. The default holds nothing.
        """

    def run_tags(self, handle: H) -> dict[str, str]:
        """MLflow run tags naming what the attempt runs on (cloud instance ids and types); a
        value may list several, comma-separated. The default: nothing beyond the target's name."""
        return {}

    def take_billed_usd(self) -> float | None:
        """What the target billed, since the last call, for what it held beyond the job's own
        time: a cloud instance is billed from launch to termination, boot and failed launches
        included. None: the target bills the job's time only (``hml.cost_usd`` is the bill)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def room(self, spec: JobSpec) -> str | None:
        """Why the target cannot start ``spec`` right now (None: it can), for ``--target auto``.

        A hint: the launch decides, and waits for capacity when it must.
        """
        return None

    def describe_plan(self, spec: JobSpec) -> dict[str, Any]:
        """What this target would launch for ``spec`` (instance type, market, price), for --dry-run."""
        return {}

    def gc(self, is_live: Callable[[str], bool]) -> list[str]:
        """Release what the target still holds for runs that are over or unknown; what was done.

        Targets whose resources end with their job (processes, GPU claims) hold nothing.
        """
        return []

    def trust(self, confirm: Callable[[list[tuple[str, str, str]]], bool]) -> list[tuple[str, str, str]]:
        """Record the target's host keys once ``confirm`` accepts their (host, type, fingerprint)."""
        raise UsageError(f"target kind {self.kind!r} has no host keys to trust")

    def commands_sent(self) -> int:
        """Requests made to the target so far (SSH commands and streams opened): what launching
        and following a job cost its hosts, written to supervisor.log after each attempt."""
        return 0

    def close(self) -> None:
        """Release connections; a backend is cheap to make again."""

    def __enter__(self) -> Backend[H]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
