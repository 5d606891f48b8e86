"""The warm agent: a per-user process that has imported what ``hml`` needs and forks a worker
for each command, so neither a submit nor the supervisor it starts pays an interpreter start
and its imports again (about half a second each on a quiet machine).

It is single-threaded and holds no connections, so a fork copies nothing half-done. Each
worker is a whole ``hml`` process as the cold path would be: its own session, the caller's
environment, working directory, umask and terminal. A worker that starts a supervisor (a
submit; a status that finds one dead) supervises that run itself once its command has
answered: it has reached the target already, so the job starts on the submit's connections.
Killing a worker touches no other, and the agent may leave at any time (idle for
``HML_AGENT_IDLE_S``, default 900 s, or ``hml agent stop``) without a run noticing.

    python -m runners.cli.agent    (started by ``hml submit`` when none runs)
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback

from hmlkit.extras import MissingExtra, require
from runners.cli import agent_client
from runners.runs import supervision

IDLE_S = 900.0


PRELOAD_SDKS = ("paramiko",)
"""The targets' SDKs a submit and a supervisor import, loaded here when their extra is installed
(``hmlkit.extras``: an install without the ``ssh`` extra has a working agent too)."""


def _preload() -> None:
    """What a submit and a supervisor import: the CLI, the backends, SSH, and mlflow, which a
    supervisor needs to close its run (a second of CPU per run, paid here once)."""
    import mlflow.tracking  # noqa: F401

    import runners.cli.app
    import runners.runs.submit
    import runners.runs.supervisor  # noqa: F401
    from runners.backends import REGISTRY, backend_class

    for module in PRELOAD_SDKS:
        with contextlib.suppress(MissingExtra):  # not installed: its commands say which extra brings it
            require(module)
    for kind in REGISTRY:
        with contextlib.suppress(MissingExtra):
            backend_class(kind)


def _read_request(conn: socket.socket) -> tuple[bytes, dict[str, object], list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, agent_client.HEADER.size, 3)
    if len(head) != agent_client.HEADER.size:
        raise OSError("short request")
    kind, length = agent_client.HEADER.unpack(head)
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise OSError("request cut short")
        body += chunk
    return kind, json.loads(body), fds


def _become(request: dict[str, object], stdio: list[int]) -> None:
    """Turn a fresh fork into a process of the caller's: session, descriptors, environment."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(str(request["cwd"]))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    for fd, name in ((1, "stdout"), (2, "stderr")):
        tty = os.isatty(fd)
        stream = io.TextIOWrapper(
            io.FileIO(fd, "w", closefd=False), encoding="utf-8", line_buffering=tty, write_through=fd == 2
        )
        setattr(sys, name, stream)


def _let_go_of_caller() -> None:
    """Nothing more goes to, or comes from, the caller's terminal."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _command(conn: socket.socket, request: dict[str, object], stdio: list[int]) -> None:
    """A worker: ``hml ARGV`` as the caller's own process; its exit code goes back last."""
    _become(request, stdio)
    os.umask(int(str(request["umask"])))
    conn.sendall(f"pid {os.getpid()}\n".encode())
    done = threading.Event()

    def watch_caller() -> None:  # the caller was killed: stop writing to its terminal, detach
        try:
            conn.recv(1)
        except OSError:
            pass
        if not done.is_set():
            _let_go_of_caller()
            import _thread

            _thread.interrupt_main()

    threading.Thread(target=watch_caller, daemon=True).start()
    supervision.supervise_here()
    from runners.cli.app import run

    try:
        argv = request["argv"]
        assert isinstance(argv, list)
        code = run([str(a) for a in argv])
    except BrokenPipeError:
        code = 0
    except BaseException:  # noqa: BLE001 - as the cold path: a traceback and exit 1
        traceback.print_exc()
        code = 1
    done.set()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    try:
        conn.sendall(f"exit {code}\n".encode())
    except OSError:
        pass
    _let_go_of_caller()  # the caller's terminal is not the supervisors'
    conn.shutdown(socket.SHUT_RDWR)  # ends the watcher's wait too
    conn.close()
    supervision.wait()


def _fork(conn: socket.socket, server: socket.socket, request: dict[str, object], fds: list[int]) -> None:
    if os.fork():
        return
    code = 1
    try:
        server.close()
        _command(conn, request, fds)
        code = 0
    except BaseException:  # noqa: BLE001 - never let a worker back into the agent's loop
        traceback.print_exc()
    finally:
        os._exit(code)


def _peer_is_us(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return bool(struct.unpack("3i", creds)[1] == os.getuid())


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(idle_s: float) -> int:
    path = agent_client.socket_path()
    lock = open(path.with_suffix(".lock"), "a+")  # noqa: SIM115 - held for the agent's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another agent of this code runs
    _preload()
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(64)
    server.settimeout(1.0)
    inode = path.stat().st_ino
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(
        f"{time.strftime('%F %T')} agent {os.getpid()} serving {path} (idle exit after {idle_s:g} s)",
        flush=True,
    )
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            _reap()
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    if not _peer_is_us(conn):
                        continue
                    kind, request, fds = _read_request(conn)
                    if kind != b"C":  # ping or quit
                        conn.sendall(f"agent {os.getpid()}\n".encode())
                        if kind == b"Q":
                            break
                        continue
                    conn.settimeout(None)
                    last = time.monotonic()  # use is a command: asking whether it runs is not
                    _fork(conn, server, request, fds)
                    for fd in fds:
                        os.close(fd)
                except Exception:  # noqa: BLE001 - one bad request must not end the agent
                    traceback.print_exc()
    finally:
        if path.exists() and path.stat().st_ino == inode:
            path.unlink()
        print(f"{time.strftime('%F %T')} agent {os.getpid()} left", flush=True)
    return 0


def main() -> int:
    setting = os.environ.get("HML_AGENT_IDLE_S") or str(IDLE_S)
    try:
        idle_s = float(setting)
    except ValueError:
        print(f"hml agent: HML_AGENT_IDLE_S must be a number of seconds, not {setting!r}", file=sys.stderr)
        return 2
    return serve(idle_s)


if __name__ == "__main__":
    sys.exit(main())
