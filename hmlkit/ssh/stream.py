"""One long-lived channel per node that streams a job's output and then its end state.

The remote side is ``follow.py`` (hmlkit/node/follow_stream.py) beside the job's wrapper; this
side only drains what has arrived, so following N nodes costs no SSH command per poll.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from hmlkit.errors import BackendError, HostFault
from hmlkit.node.jobscript import FOLLOWER
from hmlkit.ssh.shell import Prelude, never_started

SILENT_AFTER_S = 15.0
"""No heartbeat for this long: the host is hung or cut off, as a timed-out command was."""


def command(exec_dir: str, offset: int, watch_pid: bool = True, python: str = "python3") -> str:
    """``watch_pid``: the job's processes run on this host, so one that vanished ends the stream."""
    e = shlex.quote(exec_dir)
    return (
        f"exec {shlex.quote(python)} -I -S {e}/{FOLLOWER} {e} {offset}{'' if watch_pid else ' --exit-only'}"
    )


class OutputStream:
    """A running ``follow.py``: bytes as they come, then ``end`` (``EXIT <code>`` or ``GONE``)."""

    def __init__(
        self,
        channel: Any,
        label: str,
        out: Prelude | None = None,
        err: Prelude | None = None,
        pending: bytes = b"",
        pending_err: bytes = b"",
    ) -> None:
        """``out``, ``err``, ``pending``, ``pending_err``: a session's, when the follower replaced
        its helper on the same channel (hmlkit/ssh/session.py): the preludes it cut, the stdout
        and stderr it read ahead (a fast follower's ``EXIT`` can come with the helper's last reply)."""
        self.channel = channel
        self.label = label
        self.end: str | None = None
        self.syncing = ""
        """Records the job's wrapper still waits to sync to the tracking server ('' when none)."""
        self._err = pending_err
        self._said: list[str] = []
        """What the follower printed besides its protocol (a traceback, when it dies)."""
        self._heard = time.monotonic()
        self._out_prelude, self._err_prelude = out or Prelude(), err or Prelude()
        self._pending = pending
        """The login shell's own output before ``/bin/sh`` starts the follower is cut off."""

    def read(self) -> bytes:
        """What arrived since the last read; raises BackendError once the channel is lost."""
        chan = self.channel
        finished = chan.exit_status_ready()  # looked at first: data before the exit is all here then
        chunks, self._pending = [self._pending], b""
        heard = False
        while chan.recv_ready():
            heard = True
            chunks.append(self._out_prelude.feed(chan.recv(1 << 16)))
        while chan.recv_stderr_ready():
            heard = True
            self._err += self._err_prelude.feed(chan.recv_stderr(1 << 12))
        if heard:
            self._heard = time.monotonic()
        lines = self._err.split(b"\n")
        self._err = lines.pop()
        for line in lines:
            word = line.decode("utf-8", errors="replace").strip()
            if word.startswith(("EXIT", "GONE")):
                self.end = word
            elif word.startswith("SYNCING"):
                self.syncing = word.removeprefix("SYNCING").strip()
            elif word not in (".", ""):
                self._said.append(word)  # a traceback's last line says most: kept for the end
        if self.end is None and (finished or chan.closed):
            # an exit status came: the host is up and the follower died (an interpreter too old,
            # a broken login), and waiting will not help; without one the connection was lost
            fault = HostFault if finished else BackendError
            if not self._out_prelude.done:
                raise fault(f"{self.label}: {never_started(self._out_prelude, self._err_prelude)}")
            said = " | ".join([*self._said, self._err.decode("utf-8", errors="replace").strip()][-3:]).strip(
                " |"
            )
            status = f"exit status {chan.recv_exit_status()}" if finished else "connection lost"
            raise fault(f"{self.label}: the output follower ended without the job's state ({said or status})")
        if self.end is None and time.monotonic() - self._heard > SILENT_AFTER_S:
            raise BackendError(f"{self.label}: no word from the host for {SILENT_AFTER_S:g} s")
        return b"".join(chunks)

    def close(self, wait: float = 3.0) -> None:
        """End the follower and, up to ``wait`` seconds, see it gone: end of file on its stdin
        ends it (follow.py), then its exit status comes back. A channel closed outright would
        leave it running on the host until its next write failed."""
        chan = self.channel
        try:
            chan.shutdown_write()
            deadline = time.monotonic() + wait
            while not chan.exit_status_ready() and not chan.closed and time.monotonic() < deadline:
                time.sleep(0.01)
        except Exception:  # paramiko: socket, SSH and EOF errors; a lost connection ended it already
            pass
        chan.close()
