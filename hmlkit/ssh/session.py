"""One remote session per host that serves many commands: the login is paid once.

sshd starts the login user's shell (its ``~/.bashrc``, conda's or ``module``'s set-up) and
PAM's session hooks for every SSH command, even on one connection. So the pool's first command
on a host starts hmlkit/node/session.py there (``python3 -I -S``, sent inline, through
``shell.command`` like every script, so the login shell's banners are cut off by the mark) and
sends the following commands to it as requests on its stdin; the last one, the output
follower, replaces it on the same channel (``become``). A host where it cannot start (no
``python3``, one too old) gets each command as a session of its own (``shell.run``), as before.
``HML_SSH_SESSION=0`` turns it off.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from hmlkit.errors import BackendError
from hmlkit.node import session as helper
from hmlkit.ssh import shell
from hmlkit.ssh.shell import Feed, Prelude
from hmlkit.ssh.stream import OutputStream

_SOURCE = Path(helper.__file__).read_text()
NO_SESSION = "hml-no-session"


def enabled() -> bool:
    return os.environ.get("HML_SSH_SESSION", "1") != "0"


def boot(python: str) -> str:
    """Shell: start the helper with ``python``, or say ``NO_SESSION`` when there is none."""
    py = shlex.quote(python)
    return (
        f"command -v {py} >/dev/null 2>&1 && "
        f'exec {py} -I -S -c {shlex.quote(_SOURCE)} "${{LC_CTYPE+1}}" "${{LC_CTYPE-}}"\n'
        f"echo {NO_SESSION}\n"
    )


class Session:
    """A running helper on one channel; one request at a time (the pool hands it to one user)."""

    def __init__(self, channel: Any, label: str, client: Any = None) -> None:
        self.channel = channel
        self.label = label
        self.client = client
        """The connection it runs on (a pool's: a session on a dropped one is not reused)."""
        self._buf = b""
        self._stderr = b""
        """Stderr past the mark: the follower's first lines when it starts fast (``become``)."""
        self._out, self._err = Prelude(), Prelude()

    @classmethod
    def open(cls, client: Any, python: str, label: str, timeout: float) -> Session | None:
        """Start the helper; None when the host cannot run it (use a session per command)."""
        try:
            channel = client.get_transport().open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.exec_command(shell.command(boot(python)))
        except Exception as exc:  # paramiko raises socket, SSH and EOF errors alike on a lost host
            raise shell._lost(exc) from None
        session = cls(channel, label, client)
        try:
            first = session._line()
        except BackendError:
            first = b""
        if first != helper.PROTOCOL:
            session.close()
            return None
        return session

    def _more(self) -> None:
        """Wait for the next bytes of stdout (stderr drained on the way); BackendError on loss."""
        chan = self.channel
        try:
            while chan.recv_stderr_ready():
                self._stderr += self._err.feed(chan.recv_stderr(1 << 12))
            data = chan.recv(1 << 16)
        except TimeoutError:
            raise BackendError("command failed on the host: timed out") from None
        except Exception as exc:  # paramiko: socket, SSH and EOF errors on a lost host
            raise shell._lost(exc) from None
        if not data:
            raise BackendError("command failed on the host: the session ended")
        self._buf += self._out.feed(data)

    def _line(self) -> bytes:
        while b"\n" not in self._buf:
            self._more()
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._more()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _send(self, data: bytes) -> None:
        try:
            self.channel.sendall(data)
        except Exception as exc:  # paramiko: socket, SSH and EOF errors on a lost host
            raise shell._lost(exc) from None

    def run(
        self, script: str, timeout: float = 60.0, text: bool = True, stdin: Feed | None = None
    ) -> tuple[int, Any, str]:
        """What ``shell.run`` does, as a request to the helper. A session that raised is unusable:
        the caller closes it."""
        self.channel.settimeout(timeout)
        body = script.encode()
        self._send(b"RUN %d\n" % len(body) + body)

        def write(chunk: bytes) -> None:
            if chunk:
                self._send(b"%d\n" % len(chunk) + chunk)

        if callable(stdin):
            stdin(write)
        elif stdin is not None:
            write(stdin.encode() if isinstance(stdin, str) else stdin)
        self._send(b"0\n")
        out: list[bytes] = []
        err: list[bytes] = []
        while True:
            tag, _, value = self._line().decode().strip().partition(" ")
            if tag == "X":
                status = int(value)
                break
            if tag not in ("O", "E"):
                raise BackendError(f"command failed on the host: the session said {tag[:40]!r}")
            (out if tag == "O" else err).append(self._exactly(int(value)))
        said = b"".join(err).decode("utf-8", errors="replace")
        raw = b"".join(out)
        return status, raw.decode("utf-8", errors="replace") if text else raw, said

    def become(self, command: str) -> OutputStream:
        """Replace the helper by ``command`` (the output follower) on this channel."""
        body = command.encode()
        self._send(b"EXEC %d\n" % len(body) + body)
        if self._line() != b"B\n":
            raise BackendError("command failed on the host: the session did not start the follower")
        self.channel.settimeout(None)
        return OutputStream(self.channel, self.label, self._out, self._err, self._buf, self._stderr)

    def close(self) -> None:
        """End of file ends the helper; the channel goes."""
        try:
            self.channel.shutdown_write()
        except Exception:  # paramiko: a lost connection ended it already
            pass
        self.channel.close()
