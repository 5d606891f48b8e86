"""Commands on a host, whatever its user's login shell is and whatever its start-up files print.

sshd hands every command to the login user's shell (``$SHELL -c COMMAND``): bash, dash, zsh,
tcsh or csh, each reading its own rc files (``~/.bashrc``, ``~/.zshenv``, ``~/.cshrc``) first,
where banners and ``module`` messages are printed. So hml never sends its POSIX scripts as
they are: ``command`` turns a script into one line that every one of those shells reads
alike, ``exec /bin/sh -c '...' hml WORDS``, the script travelling base64-encoded in words
short enough for csh (whose words stop at 1024 characters) and made of characters no shell
treats specially. ``/bin/sh`` prints ``MARK`` on stdout and stderr first; whatever the login
shell printed before it is cut off (``Prelude``), so a banner never reaches a parser.

File transfer goes the same way (``run``'s ``stdin``, a tar stream for binaries): SFTP is a
subsystem sshd also starts through the login shell, and a banner in ``~/.bashrc`` corrupts
its protocol beyond repair.
"""

from __future__ import annotations

import base64
import io
import itertools
import tarfile
import time
from collections.abc import Callable, Iterable
from typing import Any

from hmlkit.errors import BackendError

MARK = "hml-9f3e-begin"
"""Printed by ``/bin/sh`` before the script: the login shell's own output is all before it."""
_WORD = 512


def command(script: str) -> str:
    """``script`` (POSIX sh) as one command line that any login shell runs as ``/bin/sh``."""
    encoded = base64.b64encode(script.encode()).decode()
    words = " ".join(encoded[i : i + _WORD] for i in range(0, len(encoded), _WORD))
    boot = f'echo {MARK}; echo {MARK} >&2; s=$(printf %s "$@" | base64 -d); set --; eval "$s"'
    return f"exec /bin/sh -c '{boot}' hml {words}"


class Prelude:
    """Cuts one stream (stdout or stderr) of a ``command`` up to and including ``MARK``'s line."""

    def __init__(self) -> None:
        self.done = False
        self.said = b""
        """What the login shell printed before the mark (for a message when no mark comes)."""

    def feed(self, data: bytes) -> bytes:
        """The script's own bytes in ``data`` (none until the mark has passed)."""
        if self.done:
            return data
        self.said += data
        at = self.said.find(MARK.encode() + b"\n")
        if at < 0:
            return b""
        self.done = True
        rest = self.said[at + len(MARK) + 1 :]
        self.said = self.said[:at]
        return rest


def never_started(out: Prelude, err: Prelude) -> str:
    """Why a command produced no mark: what the login shell said instead."""
    said = (err.said + out.said).decode("utf-8", errors="replace").strip()
    return (
        "the login shell did not start /bin/sh"
        + (f": {said[-300:]}" if said else " (no output)")
        + "; check the login user's shell and its start-up files (~/.bashrc, ~/.zshenv, ~/.cshrc)"
    )


Feed = str | bytes | Callable[[Callable[[bytes], None]], None]
"""What a command reads: text, bytes, or a writer called with ``write(chunk)`` (streamed, e.g.
a tar archive as it is made)."""

Runner = Callable[..., tuple[int, Any, str]]
"""``run`` bound to a host: ``(script, timeout=, text=, stdin=)``; a pool's ``runner(host)``
(one shared session, hmlkit/ssh/pool.py) or ``on(client)``."""


def on(client: Any) -> Runner:
    """``run`` on ``client``, each command a session of its own."""
    return lambda script, timeout=60.0, text=True, stdin=None: run(client, script, timeout, text, stdin)


def run(
    client: Any, script: str, timeout: float = 60.0, text: bool = True, stdin: Feed | None = None
) -> tuple[int, Any, str]:
    """Run ``script`` under ``/bin/sh`` on the host; (exit status, stdout, stderr), the login
    shell's own output cut off. Raises BackendError on I/O loss or when ``/bin/sh`` never ran.

    stdout is bytes when ``text`` is false (job output is cut at byte offsets).
    """
    try:
        given, stdout, stderr = client.exec_command(command(script), timeout=timeout)
    except Exception as exc:  # paramiko raises socket, SSH and EOF errors alike on a lost host
        raise _lost(exc) from None
    out, err = Prelude(), Prelude()
    try:
        if stdin is not None:
            if callable(stdin):
                stdin(given.channel.sendall)
            else:
                given.channel.sendall(stdin.encode() if isinstance(stdin, str) else stdin)
            given.channel.shutdown_write()
        raw = out.feed(stdout.read())
        said = err.feed(stderr.read()).decode("utf-8", errors="replace")
        status = stdout.channel.recv_exit_status()
    except BaseException as exc:
        given.channel.close()  # a feed that failed half-way must not leave the host waiting for more
        if isinstance(exc, Exception) and not isinstance(exc, BackendError):
            raise _lost(exc) from None
        raise
    if not out.done:
        raise BackendError(never_started(out, err))
    return status, raw.decode("utf-8", errors="replace") if text else raw, said


def _lost(exc: BaseException) -> BackendError:
    return BackendError(f"command failed on the host: {str(exc) or type(exc).__name__}")


Member = tuple[str, int, int, Any]
"""A file for ``tar_feed``: (name, mode, size, a readable binary file object of that size)."""


def text_files(files: dict[str, str], mode: int = 0o600) -> list[Member]:
    """``files`` ({name: text}) as tar members, private by default (``env.sh`` holds secrets)."""
    data = {name: text.encode() for name, text in files.items()}
    return [(name, mode, len(b), io.BytesIO(b)) for name, b in data.items()]


SEAL = ".hml-sealed"
"""The last member of every ``tar_feed``: an archive cut short (a lost connection, a feed that
raised) lacks it, and ``untar`` fails rather than leave part of the files as if complete."""


def untar(directory: str) -> str:
    """Shell: unpack a ``tar_feed`` from stdin into ``directory`` (a quoted shell word); fails
    unless the whole archive came."""
    return f"tar -xf - -C {directory} && [ -f {directory}/{SEAL} ] && rm -f {directory}/{SEAL}"


def tar_feed(members: Iterable[Member]) -> Callable[[Callable[[bytes], None]], None]:
    """A ``run`` feed that streams ``members`` as a tar archive (``untar`` on the host): every
    host has tar, and one command carries any number of files, binary or not. ``members`` is
    read lazily, so a generator can check each file after it was sent and raise to refuse it."""

    def feed(write: Callable[[bytes], None]) -> None:
        tar = tarfile.open(fileobj=_Sink(write), mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]  # any object with write() will do
        for name, mode, size, body in itertools.chain(members, [(SEAL, 0o600, 0, io.BytesIO())]):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, mode, int(time.time())
            tar.addfile(info, body)
        tar.close()  # only now: the end of the archive is never written for a feed that raised

    return feed


class _Sink:
    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
