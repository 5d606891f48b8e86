"""The supervisor lock in a run's directory: whoever holds it drives the run.

Its own module, below both the supervisor (which holds it for its life) and supervision (which
asks whether anyone does), so neither imports the other to share it.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


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
