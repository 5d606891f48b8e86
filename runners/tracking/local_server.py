"""A warm ``mlflow server`` for the embedded default's SQLite store, started on first use.

Opening the SQLite store means importing mlflow and SQLAlchemy's schema check: seconds before
each job may start. A server on loopback already has both loaded, so once it runs ``hml submit``
creates runs over REST (``runners.tracking.rest``) and the job logs through its relay, as
against any tracking server. It is an accelerator only: records and the MLflow UI keep the
canonical ``sqlite:///…/mlflow.db`` URI, and without a healthy server every path talks to the
store directly, as before.

``hml submit`` starts it in the background and does not wait; the run's supervisor waits for
it before the job starts (``served_uri``), so the first run's job logs through its relay too (its
run was created directly in the store). ``hml ui`` starts it and waits. A watchdog
(``python -m runners.tracking.local_server serve``) runs the server as its child, holds
``tracking-server.lock`` while it lives (so two starts make one server) and stops it
after ``HML_LOCAL_SERVER_IDLE_S`` without use: each use touches the state file, and a run whose
supervisor still lives counts as use. ``local_server: false`` in the profile or
``HML_LOCAL_SERVER=0`` keeps ``hml submit`` from starting one. Standard library only: submit
asks this before anything heavy is imported.

It answers its owner only: each start writes a token to ``tracking-server.token`` (0600) that
every request must carry (``runners.tracking.local_app`` checks it in front of MLflow, and keeps
the server inside its store and artifact root); hml's clients send it (``credentials``,
``authorization``) and only to a port whose listener is the owner's own (``healthy``).
docs/security.md says why a token, and what another account can still do.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from hmlkit.interpreter import python_module
from runners.state.paths import home

STATE = "tracking-server.json"
TOKEN = "tracking-server.token"
LOCK = "tracking-server.lock"
LOG = "tracking-server.log"
HEALTH_TIMEOUT_S = 0.5
IDLE_S = 3600.0
"""Default of ``HML_LOCAL_SERVER_IDLE_S``: the server stops after this long without use."""
START_WAIT_S = 120.0
"""How long ``hml ui``, a local job's start and the replay of a journal wait for a starting server."""
_OFF = ("0", "false", "no", "off")
_started: list[subprocess.Popen[bytes]] = []
"""Watchdogs this process started (a supervisor's live on after they end unless reaped)."""


def store_uri() -> str:
    """The embedded default's tracking URI (``runners.profile.tracking_uri`` without a profile)."""
    return f"sqlite:///{home() / 'mlflow.db'}"


def artifact_path() -> Path:
    """Where the embedded default keeps artifacts, served or not: the server's only artifact root."""
    return home() / "artifacts"


def artifact_root() -> str:
    return artifact_path().as_uri()


def is_local_store(uri: str) -> bool:
    return uri == store_uri()


def enabled(profile_switch: bool = True) -> bool:
    """Whether ``hml submit`` may start the server (profile ``local_server``, ``HML_LOCAL_SERVER``)."""
    return profile_switch and os.environ.get("HML_LOCAL_SERVER", "1").strip().lower() not in _OFF


def _state_path() -> Path:
    return home() / STATE


def read_state() -> dict[str, Any] | None:
    try:
        data = json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(state: dict[str, Any]) -> None:
    path = _state_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def url_of(state: dict[str, Any]) -> str:
    return f"http://127.0.0.1:{state['port']}"


def token() -> str | None:
    """The running (or last) server's token: what every request to it must carry."""
    try:
        return (home() / TOKEN).read_text().strip() or None
    except OSError:
        return None


def credentials() -> dict[str, str]:
    """The tracking credentials of a client of the server, as MLflow's client reads them from its
    environment (a local job's relay sends them upstream for runs on the embedded default)."""
    found = token()
    return {"MLFLOW_TRACKING_TOKEN": found} if found else {}


def authorization() -> str | None:
    """The ``Authorization`` header the server asks for."""
    found = token()
    return f"Bearer {found}" if found else None


def login_url(url: str) -> str:
    """The address that logs a browser in (``runners.tracking.local_app``: it sets a cookie and
    shows the UI). It carries the token: for its owner's eyes only."""
    return f"{url}/hml-login?token={token() or ''}"


def _write_token(value: str) -> None:
    path = home() / TOKEN
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    os.replace(tmp, path)


def owned(port: int) -> bool:
    """Whether whatever listens on ``port`` of loopback is this user's (Linux: ``/proc/net/tcp``
    names each socket's owner), so the token is never sent to a port another account took once
    the server stopped. Where there is no ``/proc`` (macOS), True: docs/security.md says so."""
    try:
        with open("/proc/net/tcp") as fh:
            rows = [line.split() for line in fh.readlines()[1:]]
    except OSError:
        return True
    suffix = f":{port:04X}"
    owners = {int(r[7]) for r in rows if len(r) > 7 and r[1].endswith(suffix) and r[3] == "0A"}  # 0A: LISTEN
    return owners == {os.getuid()}


def healthy(url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether the server at ``url`` (``url_of``) answers, asked only once its port is ours."""
    auth = authorization()
    try:
        port = urllib.parse.urlsplit(url).port
    except ValueError:
        return False
    if auth is None or port is None or not owned(port):
        return False
    request = urllib.request.Request(f"{url}/health", headers={"Authorization": auth})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def running() -> dict[str, Any] | None:
    """The state of the server for this ``HML_HOME``'s store while its watchdog lives."""
    for child in _started:  # a watchdog this process started and that ended is no zombie here
        child.poll()
    state = read_state()
    if state is None or state.get("store") != store_uri() or not _alive(state.get("pid")):
        return None
    return state


def served_uri(uri: str, wait_s: float = 0.0) -> str:
    """``http://127.0.0.1:PORT`` when ``uri`` is the embedded default's store and a healthy
    server for it runs (marking it used), else ``uri`` unchanged: callers then go direct.
    ``wait_s``: how long to wait for one that is starting (its watchdog lives): a job's
    environment waits, so that even the first run on a new store logs through its relay."""
    if not is_local_store(uri):
        return uri
    deadline = time.monotonic() + wait_s
    while (url := _answering()) is None and running() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    return url or uri


def _answering() -> str | None:
    """The URL of the server for this store when it answers (marking it used)."""
    state = running()
    if state is None or "server_pid" not in state or not healthy(url_of(state)):
        return None  # none, or its watchdog is still starting
    touch()
    return url_of(state)


def touch() -> None:
    try:
        os.utime(_state_path())
    except OSError:
        pass


def _lock_free() -> bool:
    """Whether no watchdog holds the lock (one that starts now takes it itself)."""
    home().mkdir(parents=True, exist_ok=True)
    with open(home() / LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def start() -> bool:
    """Start the watchdog and its server, detached, unless one runs or is starting; don't wait.
    True when this call started it."""
    if running() is not None or not _lock_free():
        return False
    log = open(home() / LOG, "ab")  # noqa: SIM115 - the child keeps it
    with log:
        watchdog = subprocess.Popen(
            python_module("runners.tracking.local_server", "serve"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the CLI and its terminal
            cwd=home(),
        )
    _started.append(watchdog)
    # starting: the next caller sees it alive and starts no other (the watchdog rewrites this)
    _write_state({"pid": watchdog.pid, "port": (read_state() or {}).get("port"), "store": store_uri()})
    return True


def revive(uri: str) -> None:
    """Start the server again, without waiting, when ``uri`` is its store and it is down."""
    if is_local_store(uri) and running() is None:
        start()


def ensure(wait_s: float = START_WAIT_S) -> str:
    """The server's URL once it answers, starting it if needed; RuntimeError (saying where its
    log is) when it does not come up."""
    deadline = time.monotonic() + wait_s
    start()
    while time.monotonic() < deadline:
        if url := _answering():
            return url
        if running() is None and _lock_free():
            start()  # the watchdog died (its port taken, a crash): one more try, its log says why
        time.sleep(0.2)
    raise RuntimeError(f"the local tracking server did not answer within {wait_s:g} s; see {home() / LOG}")


def stop(wait_s: float = 30.0) -> bool:
    """Stop the server (its watchdog stops its child); True when one was running."""
    state = running()
    if state is None:
        return False
    try:
        os.kill(state["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait_s
    while _alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def _port(wanted: Any) -> int:
    """The port used last time when it is free (a job's relay still points there), else a new one."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no owner
        try:
            s.bind(("127.0.0.1", int(wanted)))
        except (OSError, TypeError, ValueError):
            s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _idle_s() -> float:
    try:
        return float(os.environ.get("HML_LOCAL_SERVER_IDLE_S", IDLE_S))
    except ValueError:
        return IDLE_S


def _runs_live(store: str) -> bool:
    """A run on this store whose supervisor still lives (its job may log for hours)."""
    from runners.state import record_files

    return any(
        r.get("tracking_uri") == store and not r.get("finalized") and _alive(r.get("supervisor_pid"))
        for r in record_files.read_all()
    )


def serve() -> int:
    """The watchdog: hold the lock, run the server, stop it when idle or told to."""
    os.umask(0o077)  # the store, its log and state are the user's alone, however it was started
    lock = open(home() / LOCK, "a")  # noqa: SIM115 - held for the watchdog's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another watchdog serves already
    store, idle_s = store_uri(), _idle_s()
    previous = read_state() or {}
    port = _port(previous.get("port"))
    # fresh for each start, but kept while runs on the store live: their relays send it
    kept = token() if _runs_live(store) else None
    _write_token(kept or secrets.token_urlsafe(32))
    artifact_path().mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [
            *python_module("mlflow", "server"),
            *("--app-name", "hml-local"),  # runners.tracking.local_app: the token, the confinement
            *("--backend-store-uri", store),
            *("--default-artifact-root", artifact_root()),
            "--no-serve-artifacts",  # clients write the file store themselves, as the direct path does
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # one process less: hml runs jobs
    )
    mine = {"pid": os.getpid(), "server_pid": child.pid, "port": port, "store": store}
    _write_state(mine)
    print(f"hml: tracking server for {store} on 127.0.0.1:{port} (pid {child.pid})", flush=True)
    stopping: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("asked to stop"))
    signal.signal(signal.SIGINT, lambda *_: stopping.append("asked to stop"))
    check_s = max(0.2, min(5.0, idle_s / 4))
    up = False  # idle time counts once it answers: booting takes seconds on a busy machine
    try:
        while not stopping and child.poll() is None:
            time.sleep(0.2 if not up else check_s)
            if not up:
                if up := healthy(url_of(mine)):
                    touch()
                continue
            if (read_state() or {}).get("pid") != os.getpid():
                _write_state(mine)  # a start that lost the race to this one wrote over it
            if _runs_live(store):
                touch()
            try:
                idle = time.time() - _state_path().stat().st_mtime
            except OSError:
                stopping.append("state file removed")
                break
            if idle > idle_s:
                stopping.append(f"idle for {idle:.0f} s")
    finally:
        reason = stopping[0] if stopping else f"server exited with {child.returncode}"
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=5)  # SQLite keeps what was committed; uvicorn's goodbyes take long
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        state = read_state()
        if state is not None and state.get("pid") == os.getpid():
            _write_state({"port": port, "store": store})  # no pid: stopped; the port is kept for next time
        print(f"hml: tracking server stopped ({reason})", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        sys.exit(serve())
    sys.exit(f"usage: {sys.argv[0]} serve")
