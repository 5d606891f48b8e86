"""Where the runner keeps its state: ``$HML_HOME`` or ``~/.hybridml``.

One directory so that ``hml status`` from a new shell, any working directory, finds the run.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    root = Path(os.environ.get("HML_HOME") or Path.home() / ".hybridml").expanduser()
    return root.resolve()


def runs_dir() -> Path:
    return home() / "runs"


def run_dir(run_id: str) -> Path:
    return runs_dir() / run_id
