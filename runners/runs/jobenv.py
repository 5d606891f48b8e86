"""What a job's environment holds, and nothing else.

A job never inherits the submitter's whole environment: another ``HML_SECRET_*``, cloud
credentials or tokens in the shell that ran ``hml`` must not reach the job or its logs. It
gets exactly: the host's login variables (the backend's: sshd's on a remote host, the
``HOST_LOGIN`` names on this machine), the ``FORWARDED`` names of the submitter's
environment, the job file's ``envs`` and ``secrets``, and hml's own ``HML_*`` and ``MLFLOW_*``
variables, among them ``MLFLOW_TRACKING_TOKEN``: the attempt's own token for its relay, never
the tracking server's. The tracking server's credentials go to the relay alone
(``relay_secrets``). docs/security.md lists the same.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hmlkit.node import jobscript
from hmlkit.node.relay import TOKEN
from runners.tracking import local_server, rest

if TYPE_CHECKING:
    from runners.state.records import RunRecord

FORWARDED = (
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
FORWARDED_PREFIXES = ("LC_",)


def forwarded(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The submitter's variables a job may see (recorded at submit: no secret among them)."""
    return {k: v for k, v in environ.items() if k in FORWARDED or k.startswith(FORWARDED_PREFIXES)}


def relay_secrets(rec: RunRecord, env: Mapping[str, str]) -> dict[str, str]:
    """For the job's ``env.sh`` (as secrets: redacted like them) when a relay will run (an HTTP
    tracking URI): a fresh token per attempt, which the job's client sends its relay, and the
    upstream credentials, which the wrapper hands the relay on its stdin and keeps out of the
    job's environment (hmlkit/node/jobscript.py). Without a relay the job needs neither: its
    store is a file or a database it reaches itself."""
    if not env["MLFLOW_TRACKING_URI"].startswith(("http://", "https://")):
        return {}
    upstream = tracking_credentials(rec)
    return {
        TOKEN: secrets.token_urlsafe(32),
        jobscript.RELAY_CREDENTIALS: " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(upstream.items())),
    }


def tracking_credentials(rec: RunRecord, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The credentials of the server the job logs to, and of no other, for its relay alone
    (``relay_secrets``): a local job on the embedded default gets its local server's token
    (``local_server.credentials``), never the submitter's credentials for some other server; a
    remote one there logs to no server."""
    if local_server.is_local_store(rec.tracking_uri):
        return local_server.credentials() if rec.target_config.get("kind") == "local" else {}
    return rest.credentials(environ)


def param_env_name(key: str) -> str:
    return "HML_PARAM_" + "".join(c if c.isalnum() else "_" for c in key).upper()


def job_env(rec: RunRecord) -> dict[str, str]:
    """Everything but the secrets and the host's login variables."""
    params = rec.spec.get("params", {})
    env = dict(rec.inherited_env)
    env.update({k: str(v) for k, v in rec.spec.get("envs", {}).items()})
    env.update({param_env_name(k): str(v) for k, v in params.items()})
    env.update(
        {
            "HML_PARAMS": json.dumps(params),  # typed: --set lr=0.1 arrives as a number
            "HML_RUN_ID": rec.run_id,
            "HML_JOB": rec.job,
            "HML_TARGET": rec.target,
            "HML_ATTEMPT": str(rec.attempt),
            "MLFLOW_TRACKING_URI": _job_tracking_uri(rec),
            "MLFLOW_RUN_ID": rec.run_id,
            "MLFLOW_EXPERIMENT_ID": rec.experiment_id,
            # its "View run at" link would name the relay's port, gone with the job: hml prints the UI's
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _job_tracking_uri(rec: RunRecord) -> str:
    """A job on this machine logs to the embedded default's local server while it runs (through
    its relay, which journals what the server misses, and beside which the node's system metrics
    are sampled); elsewhere loopback is not this machine. A server still starting (the first
    submit on a new store started it) is waited for: every run gets its relay, the first too."""
    if rec.target_config.get("kind") != "local":
        return rec.tracking_uri
    return local_server.served_uri(rec.tracking_uri, wait_s=local_server.START_WAIT_S)
