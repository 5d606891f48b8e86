"""Who supervises a run: the lock a supervisor holds, starting one, restarting a dead one.

Standard library only, so any ``hml`` command can check and restart a supervisor without
loading what the supervisor itself needs (backends, pydantic models, SSH).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path
from typing import IO

from runners.paths import run_dir


def lock(directory: Path) -> IO[str] | None:
    """Hold the supervisor lock of the run in ``directory``, or None when another supervisor holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    fh = open(directory / "supervisor.lock", "a+")  # noqa: SIM115 - held for the process life
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def is_supervised(run_id: str) -> bool:
    held = lock(run_dir(run_id))
    if held is None:
        return True
    held.close()
    return False


def spawn(run_id: str) -> None:
    """Start a detached supervisor for ``run_id`` (a no-op for it if one already runs)."""
    log = open(run_dir(run_id) / "supervisor.log", "ab")  # noqa: SIM115
    subprocess.Popen(
        [sys.executable, "-m", "runners.supervisor", run_id],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    log.close()


def ensure_supervised(run_id: str, finalized: bool) -> None:
    """Restart the run's supervisor if it died (runner killed, machine rebooted)."""
    if not finalized and not is_supervised(run_id):
        spawn(run_id)
