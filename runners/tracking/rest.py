"""MLflow's REST API over urllib: what ``hml submit`` asks before the job starts.

Importing mlflow costs a second or more, all of it before the job may start; against an
``http(s)`` tracking server the few calls submit makes (experiment, run, params, the job file
as an artifact) need no client library. Used only where it behaves as mlflow's client would:
basic or bearer credentials from the environment, artifacts proxied by the server
(``mlflow-artifacts:``); anything else (client certificates, custom auth plugins, artifacts
written straight to a bucket) goes through mlflow itself (``runners.tracking.ownership``).
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from hmlkit.node.relay import CREDENTIALS

TIMEOUT_S = 15.0
REFUSED = "CONNECTION_REFUSED"
"""``RestError.code`` when nothing listened: the call did nothing on the server."""
_UNSUPPORTED_ENV = (
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_AWS_SIGV4",
    "MLFLOW_TRACKING_AUTH",
)


class RestError(Exception):
    """The server answered with an error (``code`` is MLflow's error code, when it gave one)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def credentials(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The tracking server's credentials in ``environ``, by MLflow's own names."""
    return {k: environ[k] for k in CREDENTIALS if environ.get(k)}


def usable(uri: str) -> bool:
    """Whether plain REST does for ``uri`` what mlflow's client would."""
    return uri.startswith(("http://", "https://")) and not any(os.environ.get(k) for k in _UNSUPPORTED_ENV)


class Rest:
    def __init__(
        self, uri: str, credentials: Mapping[str, str] | None = None, timeout: float = TIMEOUT_S
    ) -> None:
        """``credentials``: MLflow's ``MLFLOW_TRACKING_*`` variables for this server (default: this
        process's environment, as mlflow's client reads them; the embedded default's local server
        takes its own token, never the profile's server's credentials)."""
        self.base = uri.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        env = os.environ if credentials is None else credentials
        token = env.get("MLFLOW_TRACKING_TOKEN")
        user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            self.headers["Authorization"] = (
                "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            )

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> dict[str, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - the profile's URI
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            try:
                answer = json.loads(detail)
                raise RestError(
                    f"{exc.code} {answer.get('message', detail)}"[:300], answer.get("error_code", "")
                )
            except ValueError:
                raise RestError(f"HTTP {exc.code} from {path}: {detail[:200]}") from None
        except (OSError, ValueError) as exc:
            why = getattr(exc, "reason", None) or exc
            refused = REFUSED if isinstance(why, ConnectionRefusedError) else ""  # surely not done
            raise RestError(f"{path}: {why}", refused) from None
        return json.loads(text) if text.strip() else {}

    def experiment_id(self, name: str, artifact_location: str | None = None) -> str:
        query = urllib.parse.urlencode({"experiment_name": name})
        try:
            found = self.call("GET", f"/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
        except RestError as exc:
            if exc.code != "RESOURCE_DOES_NOT_EXIST":
                raise
        else:
            if found.get("lifecycle_stage") == "deleted":
                self.call(
                    "POST", "/api/2.0/mlflow/experiments/restore", {"experiment_id": found["experiment_id"]}
                )
            return str(found["experiment_id"])
        try:
            body = {"name": name, **({"artifact_location": artifact_location} if artifact_location else {})}
            return str(self.call("POST", "/api/2.0/mlflow/experiments/create", body)["experiment_id"])
        except RestError as exc:
            if exc.code != "RESOURCE_ALREADY_EXISTS":  # created concurrently by another submit
                raise
            return str(
                self.call("GET", f"/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"][
                    "experiment_id"
                ]
            )

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> tuple[str, str]:
        """(run_id, artifact_uri) of a new RUNNING run."""
        body = {
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": int(time.time() * 1000),
            "user_id": tags.get("mlflow.user", ""),
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        info = self.call("POST", "/api/2.0/mlflow/runs/create", body)["run"]["info"]
        return info["run_id"], info.get("artifact_uri", "")

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        self.call(
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            {"run_id": run_id, "params": [{"key": k, "value": v} for k, v in params.items()]},
        )

    def put_artifact(self, artifact_uri: str, path: str, data: bytes) -> None:
        """Upload through the server's artifact proxy (``mlflow-artifacts:/...`` run URIs only)."""
        parsed = urllib.parse.urlparse(artifact_uri)
        where = urllib.parse.quote(f"{parsed.path.strip('/')}/{path}")
        self.call("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{where}", raw=data)

    def fail(self, run_id: str, reason: str) -> None:
        self.end(run_id, "FAILED", int(time.time() * 1000), {"hml.reason": reason}, {})

    def artifact_uri(self, run_id: str) -> str:
        query = urllib.parse.urlencode({"run_id": run_id})
        return str(
            self.call("GET", f"/api/2.0/mlflow/runs/get?{query}")["run"]["info"].get("artifact_uri", "")
        )

    def end(
        self, run_id: str, status: str, end_ms: int, tags: dict[str, str], metrics: dict[str, float]
    ) -> None:
        """Tags and metrics (at step 0, now), then the terminal status: the runner's last word."""
        now = int(time.time() * 1000)
        body = {
            "run_id": run_id,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
            "metrics": [{"key": k, "value": v, "timestamp": now, "step": 0} for k, v in metrics.items()],
        }
        self.call("POST", "/api/2.0/mlflow/runs/log-batch", body)
        self.call(
            "POST", "/api/2.0/mlflow/runs/update", {"run_id": run_id, "status": status, "end_time": end_ms}
        )
