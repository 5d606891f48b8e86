"""Who supervises a run: the lock a supervisor holds, starting one, restarting a dead one.

Standard library only, so any ``hml`` command can check and restart a supervisor without
loading what the supervisor itself needs (backends, pydantic models, SSH).

A supervisor is its own detached process: a new interpreter, or, in a worker of the warm agent
(runners/cli/agent.py), the worker itself, which has everything loaded and, after a submit, the
target's connections open; it goes on supervising once its command has answered.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

from hmlkit.interpreter import python_module
from runners.state.lock import lock
from runners.state.paths import run_dir

_here: list[threading.Thread] | None = None
"""In an agent's worker: the supervisors this process runs (else None: each spawns a process)."""


def is_supervised(run_id: str) -> bool:
    held = lock(run_dir(run_id))
    if held is None:
        return True
    held.close()
    return False


def supervise_here() -> None:
    """This process is detached and has the supervisor loaded (an agent's worker): supervisors
    run here, in threads, and the process lives until they are done (``wait``)."""
    global _here
    _here = []


def wait() -> None:
    for thread in _here or []:
        thread.join()


def spawn(run_id: str, backend: Any = None) -> None:
    """Start a detached supervisor for ``run_id`` (a no-op for it if one already runs).

    ``backend``: the caller's open backend for the run's target, handed over (closed here when
    the supervisor is a new interpreter, which reaches the target again)."""
    path = run_dir(run_id) / "supervisor.log"
    if _here is not None:
        _here.append(threading.Thread(target=_supervise_here, args=(run_id, backend, path)))
        _here[-1].start()
        return
    if backend is not None:
        backend.close()
    spawn_process("runners.runs.supervisor", run_id)


def spawn_process(module: str, run_id: str) -> None:
    """``python -m module run_id`` in its own session, writing to the run's supervisor.log: it
    outlives the command that started it (a run's supervisor, a sweep's)."""
    path = run_dir(run_id) / "supervisor.log"
    log = open(path, "ab")  # noqa: SIM115
    subprocess.Popen(
        python_module(module, run_id),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    log.close()


def _supervise_here(run_id: str, backend: Any, path: Path) -> None:
    from runners.runs.supervisor import main

    with open(path, "a", encoding="utf-8") as log:
        main(run_id, backend, log)


def ensure_supervised(run_id: str, finalized: bool) -> None:
    """Restart the run's supervisor if it died (runner killed, machine rebooted)."""
    if not finalized and not is_supervised(run_id):
        spawn(run_id)
