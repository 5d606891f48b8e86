"""Run records as JSON files, read with the standard library alone.

``hml status`` and ``hml list`` only show what a record says: they read it here, without
building the pydantic model (``runners.state.records``), so from a new shell they answer at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hmlkit.errors import RunNotFound, UsageError
from runners.state.paths import run_dir, runs_dir

RECORD = "record.json"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
SWEEP = "sweep"
"""A record's ``kind`` when it is a sweep's (runners/sweeps/record.py), not a run's."""


def is_sweep(record: dict[str, Any]) -> bool:
    return record.get("kind") == SWEEP


def find(run_id: str) -> Path:
    """The record file of ``run_id`` or of the one run whose id starts with it."""
    path = run_dir(run_id) / RECORD
    if run_id and "/" not in run_id and path.is_file():
        return path
    runs = runs_dir()
    usable = run_id and "/" not in run_id and runs.is_dir()
    matches = sorted(p.name for p in runs.iterdir() if p.name.startswith(run_id)) if usable else []
    matches = [m for m in matches if (run_dir(m) / RECORD).is_file()]
    if len(matches) == 1:
        return run_dir(matches[0]) / RECORD
    if matches:
        raise UsageError(f"run id {run_id!r} is ambiguous: matches {_shown(matches)} (give more characters)")
    raise RunNotFound(run_id or "''", [f"no such run under {runs} (see `hml list`)"])


def _shown(ids: list[str], most: int = 10) -> str:
    """Each id cut where it parts from the others, never shorter than `hml list` shows them."""
    cut = next(n for n in range(8, max(8, *map(len, ids)) + 1) if len({i[:n] for i in ids}) == len(ids))
    shown = [i if len(i) <= cut else f"{i[:cut]}..." for i in ids[:most]]
    return ", ".join(shown) + (f" and {len(ids) - most} more" if len(ids) > most else "")


def read(run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(find(run_id).read_text())
    return data


def write(directory: Path, text: str) -> None:
    """Replace the record in ``directory`` atomically: a reader sees the old one or the new."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".record.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / RECORD)


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
