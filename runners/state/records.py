"""The run record on the submitting machine: enough to find, reconcile and finalize a run.

Written atomically, read without importing mlflow, so ``hml status`` from a new shell is fast
and still knows the run when the tracking server is down (it reads the JSON alone:
``runners.state.record_files``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from runners.state import record_files
from runners.state.paths import run_dir
from runners.state.record_files import TERMINAL


class RunRecord(BaseModel):
    run_id: str
    job: str
    experiment_id: str
    target: str
    target_config: dict[str, Any]
    tracking_uri: str
    spec: dict[str, Any]
    workdir: str
    secrets: list[str] = []
    inherited_env: dict[str, str] = {}
    """The submitter's allow-listed variables (runners.runs.jobenv.FORWARDED): a restart sees the same."""
    vault: dict[str, Any] | None = None
    status: str = "PENDING"  # PENDING, RUNNING, then one of TERMINAL
    reason: str = ""
    exit_code: int | None = None
    attempt: int = 0
    wait_for_capacity: bool = True
    handle: dict[str, Any] | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    submitted_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    cost_usd: float = 0.0
    """What the job's running time costs (price x nodes x hours since it started): hml.cost_usd."""
    instance_cost_usd: float | None = None
    """What the target billed for the instances it launched, each from launch to termination,
    every attempt and failed launch included: hml.instance_cost_usd. None: no such bill (not aws)."""
    target_tags: dict[str, str] = {}
    """What the attempts ran on (Backend.run_tags), every attempt's values joined: MLflow run tags."""
    supervisor_pid: int | None = None
    log_bytes: int | None = None
    """The run log's length when ``handle`` (its read position) was last saved: a restarted
    supervisor cuts the log back to it, so a line written but not yet accounted is not doubled."""
    log_pending: str = ""
    """A line read but not yet ended (the log takes whole lines only), kept for a restart."""
    finalized: bool = False
    """True once the tracking server has the terminal status, log and duration."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def dir(self) -> Path:
        return run_dir(self.run_id)

    @property
    def log_path(self) -> Path:
        return self.dir / "output.log"

    def save(self) -> None:
        record_files.write(self.dir, self.model_dump_json(indent=1))


def load(run_id: str) -> RunRecord:
    return RunRecord.model_validate(record_files.read(run_id))
