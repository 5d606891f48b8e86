"""Where the runner keeps its state: ``$HML_HOME`` or ``~/.hybridml``.

One directory so that ``hml status`` from a new shell, any working directory, finds the run.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path


def home() -> Path:
    root = Path(os.environ.get("HML_HOME") or Path.home() / ".hybridml").expanduser()
    return root.resolve()


def runs_dir() -> Path:
    return home() / "runs"


def run_dir(run_id: str) -> Path:
    return runs_dir() / run_id


def runner_id() -> str:
    """This runner's identity (host and state directory, hashed), on what it starts elsewhere
    (an instance's ``hml:runner`` tag, a Slurm job's comment), so ``hml gc`` releases only its own."""
    return hashlib.sha256(f"{socket.gethostname()}:{home()}".encode()).hexdigest()[:16]
