"""What the embedded default's local tracking server serves: MLflow's own app, answering its
owner only and reading and writing nothing outside its store and artifact root.

``runners.tracking.local_server`` starts ``mlflow server --app-name hml-local`` (this module's
``create_app``, an ``mlflow.app`` entry point of the package), so MLflow still sets up its store,
its workers and uvicorn; this only wraps the app it would serve.

- **The owner's token.** Loopback is open to every account of a shared machine, and the port
  can be found (``/proc/net/tcp``). Every request must carry the token the watchdog wrote to
  ``$HML_HOME/tracking-server.token`` (0600) for this start: ``Authorization: Bearer`` (what
  MLflow's client sends from ``MLFLOW_TRACKING_TOKEN``, and what hml's own clients send), or
  the browser's cookie, set once by the ``/hml-login`` address ``hml ui`` prints. Anything
  else gets 401 and nothing from MLflow, ``/health`` included. Why a token and not a Unix
  socket: docs/security.md.
- **Confinement.** An experiment's artifact location is a path the server opens with the
  owner's rights: one pointing into another user's directory (a symlink there to
  ``~/.bashrc``) would make the server read and write the owner's files for whoever can name
  it. So creating an experiment whose location is not under the artifact root is refused (400),
  so is creating a run in such an experiment, and, for experiments already in the store, every
  artifact repository the server opens must resolve (symlinks and all) under the root; other
  schemes (buckets, other servers) are refused: the server holds the owner's cloud credentials
  too.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

from runners.state.paths import home
from runners.tracking import local_server

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOGIN = "/hml-login"
"""``GET /hml-login?token=...`` sets the browser's cookie and redirects to the UI."""
_REFUSED = (
    "the local tracking server answers its owner only: hml's clients send its token; "
    "in a browser, open the address `hml ui` prints"
)
_DELEGATING = ("runs", "models")
"""Artifact schemes that only name another location, which is then opened through the registry."""


def cookie_name(port: int) -> str:
    """A browser sends a cookie of ``127.0.0.1`` to every port there: one name per port keeps two
    servers of one user (two ``HML_HOME``s) from overwriting each other's."""
    return f"hml-{port}"


def create_app() -> ASGIApp:
    """The ``mlflow.app`` entry point (a factory: uvicorn calls it in the server process)."""
    from mlflow.server.fastapi_app import app

    token = local_server.token()
    if not token:
        raise SystemExit(f"hml: no {local_server.TOKEN} in {home()}; start the server with hml")
    root = local_server.artifact_path().resolve()
    _confine_artifacts(root)
    return Guard(app, token, root)


class Guard:
    """MLflow's ASGI app behind the owner's token, with artifact locations checked on creation."""

    def __init__(self, app: ASGIApp, token: str, root: Path) -> None:
        self.app = app
        self.token = token.encode()
        self.root = root
        self._store: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan: MLflow's own start and stop
            return
        if scope["type"] == "http" and scope["path"] == LOGIN:
            await self._login(scope, send)
            return
        if not self._authorized(scope):
            await _refuse(scope, send, 401, "UNAUTHENTICATED", _REFUSED)
            return
        endpoint = _endpoint(scope)
        if endpoint in ("experiments/create", "runs/create"):
            body = await _read_body(receive)
            problem = await self._location_problem(endpoint, body)
            if problem:
                await _refuse(scope, send, 400, "INVALID_PARAMETER_VALUE", problem)
                return
            receive = _replaying(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        cookie = cookie_name(_port(scope)).encode()
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                if hmac.compare_digest(value[7:].strip(), self.token):
                    return True
            elif name == b"cookie":
                for part in value.split(b";"):
                    key, _, given = part.strip().partition(b"=")
                    if key == cookie and hmac.compare_digest(given, self.token):
                        return True
        return False

    async def _login(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("token") or [""])[0].encode()
        if not hmac.compare_digest(given, self.token):
            await _refuse(scope, send, 401, "UNAUTHENTICATED", _REFUSED)
            return
        cookie = f"{cookie_name(_port(scope))}={self.token.decode()}; HttpOnly; SameSite=Strict; Path=/"
        headers = [
            (b"location", b"/"),
            (b"set-cookie", cookie.encode()),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _location_problem(self, endpoint: str, body: bytes) -> str:
        """Why a create must be refused ("" when it may go on; MLflow answers malformed ones)."""
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return ""
        if not isinstance(request, dict):
            return ""
        if endpoint == "experiments/create":
            location = request.get("artifact_location")
            if location and not self.holds(str(location)):
                return (
                    f"artifact_location {location!r} is outside this server's artifact root "
                    f"{self.root}: the local tracking server reads and writes only there; leave "
                    "artifact_location out (the server picks a place under the root) or name a "
                    "directory under the root"
                )
            return ""
        experiment = request.get("experiment_id")
        if not experiment:
            return ""
        location = await asyncio.to_thread(self._experiment_location, str(experiment))
        if location and not self.holds(location):
            return (
                f"the local tracking server creates no run there: experiment {experiment} keeps its "
                f"artifacts at {location!r}, outside this server's artifact root {self.root}; log "
                "the run to an experiment whose artifact location is under the root"
            )
        return ""

    def holds(self, location: str) -> bool:
        """Whether ``location`` (a ``file:`` URI or a path) resolves, symlinks and all, under the root."""
        parts = urlparse(location)
        if parts.scheme not in ("", "file") or parts.netloc:
            return False
        path = Path(unquote(parts.path))
        return path.is_absolute() and _under(path.resolve(), self.root)

    def _experiment_location(self, experiment_id: str) -> str | None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        if self._store is None:
            self._store = MlflowClient(local_server.store_uri())
        try:
            return str(self._store.get_experiment(experiment_id).artifact_location)
        except MlflowException:
            return None  # no such experiment: MLflow's own answer says so


def _under(real: Path, root: Path) -> bool:
    return real == root or root in real.parents


def _port(scope: Scope) -> int:
    server = scope.get("server") or ("", 0)
    return int(server[1] or 0)


def _endpoint(scope: Scope) -> str:
    """``experiments/create`` for a POST to ``/api/2.0/mlflow/experiments/create`` (or ``ajax-api``,
    any version, doubled slashes), "" for anything else."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return ""
    path = re.sub("/+", "/", scope["path"]).rstrip("/")
    _, found, endpoint = path.rpartition("/mlflow/")
    return endpoint if found else ""


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for MLflow's app once the guard has read the body: the body first, then the
    client's own messages (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # before accept: the client sees 403
        return
    body = json.dumps({"error_code": code, "message": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="hml local tracking server"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _confine_artifacts(root: Path) -> None:
    """In the server process only: local artifact repositories resolve under ``root`` or refuse;
    every other scheme is refused."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.store.artifact.artifact_repository_registry import get_registered_artifact_repositories
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    def inside(path: str) -> str:
        real = Path(path).resolve()
        if not _under(real, root):
            raise MlflowException(
                f"{path} is outside the local tracking server's artifact root {root}: it reads and "
                "writes only there",
                INVALID_PARAMETER_VALUE,
            )
        return str(real)

    class Confined(LocalArtifactRepository):
        """Opened at its resolved directory, so a link on the way cannot lead it out later;
        MLflow checks each path below it (symlinks resolved) against that directory, and the
        two operations it does not check are checked here."""

        def __init__(
            self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
        ) -> None:
            super().__init__(artifact_uri, tracking_uri, registry_uri)
            self._artifact_dir = inside(self._artifact_dir)

        def delete_artifacts(self, artifact_path: str | None = None) -> None:
            inside(os.path.join(self.artifact_dir, artifact_path or ""))
            super().delete_artifacts(artifact_path)

        def download_trace_data(self) -> dict[str, Any]:
            from mlflow.tracing.utils.artifact_utils import TRACE_DATA_FILE_NAME

            inside(os.path.join(self.artifact_dir, TRACE_DATA_FILE_NAME))
            return dict(super().download_trace_data())

    def refused(artifact_uri: str, *_: Any, **__: Any) -> Any:
        raise MlflowException(
            f"artifact location {artifact_uri} is not under the local tracking server's artifact "
            f"root {root}: it reads and writes only there",
            INVALID_PARAMETER_VALUE,
        )

    repositories = cast(dict[str, Any], get_registered_artifact_repositories())  # the live registry
    for scheme in list(repositories):
        if scheme not in _DELEGATING:
            repositories[scheme] = refused
    repositories[""] = repositories["file"] = Confined
