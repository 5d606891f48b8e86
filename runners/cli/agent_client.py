"""Talking to the warm agent (runners/cli/agent.py): finding it, handing it a command, starting it.

Standard library only and imported before anything else by the ``hml`` entry point, so a
command the agent runs costs this process an interpreter start and one socket round trip.
The agent is an accelerator: when it is off (``HML_AGENT=0``), not started yet, or of another
version of the code, every caller goes the cold way and nothing changes but the time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from hmlkit.errors import HmlError
from hmlkit.interpreter import python_module

if TYPE_CHECKING:
    import subprocess

PACKAGES = ("runners", "hmlkit", "policies")
"""What the agent has loaded: a change to any of their files makes a new agent (a new socket)."""
HEADER = struct.Struct("!cI")
"""Request header, sent with the caller's descriptors: kind (b"C" command, b"P" ping,
b"Q" quit) and the length of the JSON body that follows."""


class AgentRefused(HmlError):
    """The agent's directory is not this user's alone: it is not used (never trust a socket
    another user could have planted, since requests carry the caller's environment)."""


ANSWER_S = 15.0
"""An agent that takes a command but does not fork a worker for it this long is wedged."""


def enabled() -> bool:
    """On unless ``HML_AGENT=0``; only where the kernel names a socket's peer (Linux)."""
    return os.environ.get("HML_AGENT", "1") != "0" and hasattr(socket, "SO_PEERCRED")


def _fingerprint() -> str:
    """The interpreter and every source file's size and mtime: an agent runs exactly this code."""
    parts = [sys.executable]
    root = Path(__file__).resolve().parents[2]
    for package in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(root / package):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(dirpath, name))
                    parts.append(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}")
    data = "\n".join(parts).encode()
    return f"{zlib.crc32(data):08x}{len(data):x}"  # a cache key, not a secret: no OpenSSL to load


def directory() -> Path:
    """Per user, private: ``$XDG_RUNTIME_DIR/hml`` or ``/tmp/hml-<uid>``, mode 0700, ours."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    path = Path(base) / ("hml" if "XDG_RUNTIME_DIR" in os.environ else f"hml-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise AgentRefused(f"{path}: {exc}") from None
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise AgentRefused(f"{path} is not a directory of this user's alone (mode 0700)")
    return path


def socket_path() -> Path:
    return directory() / f"agent-{_fingerprint()}.sock"


def connect() -> socket.socket | None:
    """A connection to this code's agent, or None (off, not running, refused)."""
    if not enabled():
        return None
    try:
        path = socket_path()
    except AgentRefused:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _send(sock: socket.socket, kind: bytes, body: dict[str, object], fds: list[int]) -> None:
    data = json.dumps(body).encode()
    head = HEADER.pack(kind, len(data))
    if fds:
        socket.send_fds(sock, [head], fds)
    else:
        sock.sendall(head)
    sock.sendall(data)


def _request(extra: dict[str, object]) -> dict[str, object]:
    return {"env": dict(os.environ), "cwd": os.getcwd(), **extra}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def run_command(argv: list[str]) -> int | None:
    """Have the agent run ``hml ARGV`` on this process's stdin, stdout and stderr; its exit
    code, or None when no agent answered (then run it here). Ctrl-C and termination signals
    are passed on to the agent's worker, which handles them as ``hml`` itself would."""
    sock = connect()
    if sock is None:
        return None
    umask = os.umask(0)
    os.umask(umask)
    stdio = [fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)]  # e.g. no stdin
    try:
        _send(sock, b"C", _request({"argv": argv, "umask": umask}), stdio)
    except OSError:  # also: this process's working directory is gone; the cold path says so
        sock.close()
        return None
    worker: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if worker:
            os.kill(worker[0], signum)
        else:  # not started yet: the worker sees the connection close and stops
            os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    sock.settimeout(ANSWER_S)
    reader = sock.makefile("r", encoding="utf-8")
    try:
        for line in reader:
            word, _, value = line.strip().partition(" ")
            if word == "pid":
                worker.append(int(value))
                sock.settimeout(None)
            elif word == "exit":
                return int(value)
    except TimeoutError:  # a worker forked later finds us gone before it runs anything
        print(
            f"hml: error: the agent did not answer within {ANSWER_S:g} s; stop it (hml agent stop) "
            "or set HML_AGENT=0",
            file=sys.stderr,
        )
        return 1
    print("hml: error: the agent's worker ended without an exit code (see the agent log)", file=sys.stderr)
    return 1


class AgentDied(HmlError):
    """The agent ended before it listened (an install it cannot load, a bad setting)."""

    exit_code = 2


def start_background() -> subprocess.Popen[bytes] | None:
    """Start this code's agent for the next command (this one goes the cold way); a second
    starter finds the first's lock and leaves."""
    import subprocess

    if not enabled():
        return None
    try:
        log = directory() / "agent.log"
    except AgentRefused as exc:
        print(f"hml: the agent is not used: {exc}", file=sys.stderr)
        return None
    with open(log, "ab") as out:
        return subprocess.Popen(
            python_module("runners.cli.agent"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "HML_AGENT": "1"},
        )


def start_and_wait(wait_s: float = 60.0) -> int:
    """This code's agent's pid, starting it unless one answers. One that ends at start is
    reported at once, with the last line it printed (its reason), not after ``wait_s``."""
    import time

    log = directory() / "agent.log"
    seen = log.stat().st_size if log.exists() else 0
    started = start_background() if ping() is None else None
    deadline = time.monotonic() + wait_s
    while (found := ping()) is None:
        if started is not None and started.poll():  # exit 0: another starter's agent holds the lock
            with open(log, "rb") as fh:
                fh.seek(seen)
                said = [line for line in fh.read().decode(errors="replace").splitlines() if line.strip()]
            reason = said[-1].strip() if said else f"exit code {started.returncode}"
            raise AgentDied(f"the agent ended at start: {reason} (see {log})")
        if time.monotonic() > deadline:
            raise HmlError(f"the agent did not answer within {wait_s:g} s; see {log}")
        time.sleep(0.1)
    return found


def _ask(kind: bytes) -> str | None:
    sock = connect()
    if sock is None:
        return None
    with sock:
        try:
            _send(sock, kind, {}, [])
            return sock.makefile("r", encoding="utf-8").readline().strip()
        except OSError:
            return None


def ping() -> int | None:
    """The pid of this code's agent, or None when none answers."""
    reply = _ask(b"P")
    return int(reply.split()[1]) if reply and reply.startswith("agent ") else None


def stop() -> bool:
    """Ask this code's agent to leave (its runs' supervisors go on); False when none ran."""
    return _ask(b"Q") is not None
