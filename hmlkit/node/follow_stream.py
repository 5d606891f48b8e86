"""Follows a job on its host over one long-lived SSH channel: standard library only.

    python3 -I -S follow.py EXEC_DIR OFFSET [--exit-only]

Shipped beside the job wrapper (hmlkit.node.jobscript), it streams ``output.log`` from byte
``OFFSET`` to stdout as it grows and ends with the job's state on stderr: ``EXIT <code>``,
or ``GONE`` when the job's process group is gone without an exit code (the host rebooted,
the job was killed). While the wrapper waits for its tracking relay to drain, stderr also
says ``SYNCING <records>`` each time the count changes (``SYNCING`` alone once it is done).
With ``--exit-only``, for a job whose processes run on other machines
(Slurm's compute nodes), only the exit code ends it, or the runner letting go: end of file on
its stdin (the channel's EOF; nothing else writes there) ends it at once, so a cancelled run,
which writes no exit code, leaves no follower behind.
Between them stderr carries a heartbeat, so the runner tells a silent job from a hung host
without asking again. One such channel per node replaces polling each node with SSH
commands; the runner keeps the offset, so a new follower resumes where the last one stopped.
"""

import os
import select
import sys
import time

TICK_S = 0.1
FAST_TICK_S = 0.02
"""While the job is young or has just written: output reaches the runner within a tick."""
FAST_FOR_S = 2.0
HEARTBEAT_S = 2.0


def alive(exec_dir: str) -> bool:
    """Whether the job's process group (the wrapper leads it) still exists."""
    try:
        with open(os.path.join(exec_dir, "pid")) as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_state(exec_dir: str, watch_pid: bool) -> "str | None":
    """``EXIT <code>``, ``GONE``, or None while the job runs (exit code looked at first)."""
    exit_file = os.path.join(exec_dir, "exit_code")
    for _ in range(2):  # the wrapper writes its exit code, then ends: look again once it ended
        try:
            with open(exit_file) as fh:
                return f"EXIT {fh.read().strip() or 1}"
        except OSError:
            pass
        if not watch_pid or alive(exec_dir):
            return None
    return "GONE"


def syncing(exec_dir: str) -> str:
    """The records the wrapper still waits to sync (its ``syncing`` file), or ''."""
    try:
        with open(os.path.join(exec_dir, "syncing")) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def released(wait: float) -> bool:
    """Whether the runner let go (end of file on stdin), waiting up to ``wait`` seconds for it."""
    ready, _, _ = select.select([sys.stdin], [], [], wait)
    return bool(ready) and not os.read(sys.stdin.fileno(), 4096)


def main(exec_dir: str, offset: int, watch_pid: bool) -> int:
    out, err = sys.stdout.buffer, sys.stderr
    parent = os.getppid()
    log = None
    beat = lively = time.monotonic()
    said = ""
    while True:
        end = end_state(exec_dir, watch_pid)  # before the read: all the job wrote before its end is read
        now = syncing(exec_dir)
        if now != said:
            err.write(f"SYNCING {now}".rstrip() + "\n")
            err.flush()
            said = now
        if log is None:
            try:
                log = open(os.path.join(exec_dir, "output.log"), "rb")  # noqa: SIM115 - held open
                log.seek(offset)
            except OSError:
                log = None
        while log is not None:
            chunk = log.read(1 << 16)
            if not chunk:
                break
            out.write(chunk)
            out.flush()
            lively = time.monotonic()
        if end is not None:
            err.write(end + "\n")
            err.flush()
            return 0
        if os.getppid() != parent:
            return 0  # the SSH session is gone: nobody reads any more
        if time.monotonic() - beat > HEARTBEAT_S:
            err.write(".\n")
            err.flush()
            beat = time.monotonic()
        if released(FAST_TICK_S if time.monotonic() - lively < FAST_FOR_S else TICK_S):
            return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1], int(sys.argv[2]), "--exit-only" not in sys.argv[3:]))
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)
