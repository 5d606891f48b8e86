"""Run records as JSON files, read with the standard library alone.

``hml status`` and ``hml list`` only show what a record says: they read it here, without
building the pydantic model (``runners.state.records``), so from a new shell they answer at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hmlkit.errors import RunNotFound
from runners.state.paths import run_dir, runs_dir

RECORD = "record.json"
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def find(run_id: str) -> Path:
    """The record file of ``run_id`` or of the one run whose id starts with it."""
    path = run_dir(run_id) / RECORD
    if run_id and "/" not in run_id and path.is_file():
        return path
    matches = [p.name for p in runs_dir().glob(f"{run_id}*")] if run_id and "/" not in run_id else []
    if len(matches) == 1 and (run_dir(matches[0]) / RECORD).is_file():
        return run_dir(matches[0]) / RECORD
    hint = "ambiguous prefix" if matches else "see `hml list`"
    raise RunNotFound(run_id or "''", [f"no such run under {runs_dir()} ({hint})"])


def read(run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(find(run_id).read_text())
    return data


def read_all() -> list[dict[str, Any]]:
    """Every readable record, newest submission first."""
    found = []
    for path in runs_dir().glob(f"*/{RECORD}"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: r.get("submitted_at", 0), reverse=True)


def cancel_flag(run_id: str) -> Path:
    return run_dir(run_id) / "cancel-requested"
