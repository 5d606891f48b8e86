"""A sweep's record: beside the runs (``$HML_HOME/runs/<id>``), under its parent MLflow run's
id, so ``hml list`` shows it and ``hml status|logs|cancel`` find it by the same short ids.

``kind: sweep`` tells it from a run's record. The study itself (every trial's params, state,
intermediate values and run) is Optuna's SQLite storage in the same directory; the record
keeps what ``hml status`` shows without loading Optuna, written by the sweep's supervisor.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from runners.state import record_files
from runners.state.paths import run_dir
from runners.state.record_files import TERMINAL

STUDY = "study.db"


class SweepRecord(BaseModel):
    kind: Literal["sweep"] = "sweep"  # record_files.SWEEP
    run_id: str
    """The parent MLflow run's id: the sweep's id."""
    job: str
    job_path: str
    overrides: list[str] = []
    target: str
    """What each trial is submitted with (``auto``: the placement order, spilling when full)."""
    config: str | None = None
    """The profile file, so a restarted supervisor reads the same one from any directory."""
    tracking_uri: str
    experiment_id: str
    sweep: dict[str, Any]
    """The SweepConfig, as validated at submit."""
    status: str = "PENDING"
    reason: str = ""
    submitted_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    cost_usd: float = 0.0
    """What the trials cost so far (ended: their bill; running: their time so far)."""
    stopping: str = ""
    """Why no more trials start (the sweep's budget, a cancel); empty while they may. Kept
    here so a restarted supervisor does not try again what was refused."""
    supervisor_pid: int | None = None
    finalized: bool = False
    trials: list[dict[str, Any]] = []
    """number, state, params, value, run_id, target: what ``hml status`` lists."""
    best: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def dir(self) -> Path:
        return run_dir(self.run_id)

    @property
    def log_path(self) -> Path:
        return self.dir / "output.log"

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.dir / STUDY}"

    def save(self) -> None:
        record_files.write(self.dir, self.model_dump_json(indent=1))
