"""MLflow run ownership: the runner creates the run before the job and closes it after.

mlflow is imported here only, inside functions, so commands that do not talk to the tracking
server (``--help``, ``status``, ``logs``) stay fast.
"""

from __future__ import annotations

import getpass
import subprocess
import time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

from hmlkit.errors import TrackingError
from runners.tracking import local_server, rest

SPEC_ARTIFACT = "hml/job.yaml"
LOG_ARTIFACT_DIR = "hml"


def _client(tracking_uri: str) -> Any:
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not the store's migration chatter

    return MlflowClient(tracking_uri=tracking_uri)


def git_commit(workdir: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(workdir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_experiment_location(tracking_uri))
    except MlflowException:  # created concurrently by another submit
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _experiment_location(tracking_uri: str) -> str | None:
    if local_server.is_local_store(tracking_uri):
        return local_server.artifact_root()  # the embedded default keeps all in HML_HOME
    return None


def _run_tags(spec: dict[str, Any], target: str, workdir: Path, extra_tags: dict[str, str]) -> dict[str, str]:
    user = getpass.getuser()
    tags = {
        "hml.target": target,
        "hml.job": spec["name"],
        "hml.user": user,
        "hml.workdir": str(workdir),
        "mlflow.user": user,
        "mlflow.source.name": spec["run"].splitlines()[0][:250],
        **extra_tags,
    }
    commit = git_commit(workdir)
    if commit:
        tags["hml.git_commit"] = tags["mlflow.source.git.commit"] = commit
    return tags


def start_run(
    tracking_uri: str,
    spec: dict[str, Any],
    experiment: str,
    target: str,
    workdir: Path,
    params: dict[str, str],
    extra_tags: dict[str, str],
    artifacts: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Create the run with params, tags and the resolved spec; return (run_id, experiment_id).

    ``artifacts``: more text files of the run beside the spec, by artifact path (the lock).

    Against an http(s) server, and the embedded default's store while its local server runs
    (``runners.tracking.local_server``), this is plain REST (``runners.tracking.rest``): the job does not
    wait for the mlflow import."""
    tags = _run_tags(spec, target, workdir, extra_tags)
    api = _rest(tracking_uri)
    if api is not None:
        try:
            location = _experiment_location(tracking_uri)
            return _start_run_rest(
                api, tracking_uri, spec, experiment, params, tags, location, artifacts or {}
            )
        except rest.RestError as exc:  # no run was created
            if not local_server.is_local_store(tracking_uri) or exc.code != rest.REFUSED:
                raise TrackingError(f"tracking server {tracking_uri}: {_short(exc)}") from exc
            # the local server stopped since it answered: the store directly
    from mlflow.entities import Param

    try:
        client = _client(tracking_uri)
        experiment_id = _experiment_id(client, experiment, tracking_uri)
        run_id = client.create_run(experiment_id, tags=tags, run_name=spec["name"]).info.run_id
    except Exception as exc:  # mlflow raises many kinds: connection, REST, sqlalchemy
        raise TrackingError(f"tracking server {tracking_uri}: {_short(exc)}") from exc
    try:
        if params:
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        client.log_dict(run_id, spec, SPEC_ARTIFACT)
        for path, text in (artifacts or {}).items():
            client.log_text(run_id, text, path)
    except Exception as exc:
        _refused(tracking_uri, run_id, exc)
    return run_id, experiment_id


def _rest(tracking_uri: str, timeout: float = rest.TIMEOUT_S) -> rest.Rest | None:
    """Plain REST to the server for ``tracking_uri`` (the embedded default's local server, with
    its own token, while it answers), or None where mlflow's client is needed."""
    served = local_server.served_uri(tracking_uri)
    if not rest.usable(served):
        return None
    return rest.Rest(served, local_server.credentials() if served != tracking_uri else None, timeout)


SYSTEM = "system/"
STATUS_TIMEOUT_S = 3.0


def system_metrics(tracking_uri: str, run_id: str) -> dict[str, float]:
    """The latest sample of the run's system metrics (hmlkit/node/sysmetrics.py: CPU, memory,
    each GPU), without the ``system/`` prefix, for ``hml status`` of a running job: read from
    the server, so the same on every target. Empty where no server answers soon (the store is
    a file, or the server is away: the samples wait in the relay's journal), since a status
    must not hang on the tracking server."""
    api = _rest(tracking_uri, STATUS_TIMEOUT_S)
    if api is None:
        return {}
    try:
        answer = api.call("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}")
    except rest.RestError:
        return {}
    metrics = answer.get("run", {}).get("data", {}).get("metrics", [])
    return {
        m["key"][len(SYSTEM) :]: m["value"]
        for m in sorted(metrics, key=lambda m: m["key"])
        if m.get("key", "").startswith(SYSTEM)
    }


def _start_run_rest(
    api: rest.Rest,
    tracking_uri: str,
    spec: dict[str, Any],
    experiment: str,
    params: dict[str, str],
    tags: dict[str, str],
    artifact_location: str | None,
    artifacts: dict[str, str],
) -> tuple[str, str]:
    import yaml

    experiment_id = api.experiment_id(experiment, artifact_location)  # RestError: nothing created yet
    run_id, artifact_uri = api.create_run(experiment_id, spec["name"], tags)
    try:
        if params:
            api.log_params(run_id, params)
        text = yaml.dump(spec, indent=2, default_flow_style=False)  # as mlflow's log_dict writes it
        _put_artifact(api, run_id, artifact_uri, SPEC_ARTIFACT, text.encode())
        for path, body in artifacts.items():
            _put_artifact(api, run_id, artifact_uri, path, body.encode())
    except Exception as exc:
        _refused(tracking_uri, run_id, exc)
    return run_id, experiment_id


def _put_artifact(api: rest.Rest, run_id: str, artifact_uri: str, path: str, data: bytes) -> None:
    """One artifact of the run, written where its artifact URI says, as mlflow's client would."""
    where = urlparse(artifact_uri)
    if where.scheme == "mlflow-artifacts" and not where.netloc:
        api.put_artifact(artifact_uri, path, data)
    elif where.scheme == "file" and not where.netloc:  # as mlflow's local artifact store writes it
        target = Path(where.path) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    else:  # artifacts go straight to a store (a bucket): mlflow's client knows how
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / Path(path).name
            staged.write_bytes(data)
            _client(api.base).log_artifact(run_id, str(staged), str(Path(path).parent))


def _refused(tracking_uri: str, run_id: str, exc: Exception) -> NoReturn:
    reason = f"the tracking server refused the run's params or job file: {_short(exc)}"
    fail_run(tracking_uri, run_id, reason)
    raise TrackingError(f"tracking server {tracking_uri}: {reason}") from exc


def fail_run(tracking_uri: str, run_id: str, reason: str) -> None:
    """End a run FAILED that will never get a job; best effort (the server may be what failed)."""
    try:
        api = _rest(tracking_uri)
        if api is not None:
            api.fail(run_id, reason[:5000])
            return
        client = _client(tracking_uri)
        client.set_tag(run_id, "hml.reason", reason[:5000])
        client.set_terminated(run_id, status="FAILED")
    except Exception:  # noqa: BLE001 - the caller reports the original error
        pass


def finalize(
    tracking_uri: str,
    run_id: str,
    status: str,
    exit_code: int | None,
    reason: str,
    duration_s: float,
    cost_usd: float,
    log_path: Path,
    ended_at: float,
    instance_cost_usd: float | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Close the run: log, exit code, reason, duration, cost, terminal status.

    ``instance_cost_usd``: the instances' bill, launch to termination (cloud targets only);
    ``tags``: what the attempts ran on (instance ids and types). Over plain REST where run
    creation is (no mlflow import in the supervisor either)."""
    tags = {**(tags or {}), "hml.reason": reason or status.lower()}
    if exit_code is not None:
        tags["hml.exit_code"] = str(exit_code)
    metrics = {"hml.duration_s": duration_s, "hml.cost_usd": cost_usd}
    if instance_cost_usd is not None:
        metrics["hml.instance_cost_usd"] = instance_cost_usd
    api = _rest(tracking_uri)
    if api is not None:
        try:
            if log_path.exists():
                log = log_path.read_bytes()
                _put_artifact(
                    api, run_id, api.artifact_uri(run_id), f"{LOG_ARTIFACT_DIR}/{log_path.name}", log
                )
            api.end(run_id, status, int(ended_at * 1000), tags, metrics)
        except Exception as exc:  # the finalize loop retries
            raise TrackingError(f"tracking server {tracking_uri}: {_short(exc)}") from exc
        return
    from mlflow.entities import Metric, RunTag

    try:
        client = _client(tracking_uri)
        if log_path.exists():
            client.log_artifact(run_id, str(log_path), LOG_ARTIFACT_DIR)
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.set_terminated(run_id, status=status, end_time=int(ended_at * 1000))
    except Exception as exc:
        raise TrackingError(f"tracking server {tracking_uri}: {_short(exc)}") from exc


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
