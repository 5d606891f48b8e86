"""The run record on the submitting machine: enough to find, reconcile and finalize a run.

Written atomically, read without importing mlflow, so ``hml status`` from a new shell is fast
and still knows the run when the tracking server is down.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from hmlkit.errors import RunNotFound
from runners.paths import run_dir, runs_dir

TERMINAL = ("FINISHED", "FAILED", "KILLED")


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
    """The submitter's allow-listed variables (runners.jobenv.FORWARDED): a restart sees the same."""
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
    supervisor_pid: int | None = None
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
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".record.{os.getpid()}.tmp"
        tmp.write_text(self.model_dump_json(indent=1))
        os.replace(tmp, self.dir / "record.json")


def load(run_id: str) -> RunRecord:
    path = run_dir(run_id) / "record.json"
    if not run_id or "/" in run_id or not path.is_file():
        matches = [p.name for p in runs_dir().glob(f"{run_id}*")] if run_id and "/" not in run_id else []
        if len(matches) == 1:
            return load(matches[0])
        hint = "ambiguous prefix" if matches else "see `hml list`"
        raise RunNotFound(run_id or "''", [f"no such run under {runs_dir()} ({hint})"])
    return RunRecord.model_validate(json.loads(path.read_text()))


def all_records() -> list[RunRecord]:
    records = []
    for path in runs_dir().glob("*/record.json"):
        try:
            records.append(RunRecord.model_validate(json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.submitted_at, reverse=True)


def cancel_flag(run_id: str) -> Path:
    return run_dir(run_id) / "cancel-requested"
