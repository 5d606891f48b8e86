"""What ``hml submit`` does before the job starts, and how any command follows a run."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from runners import records, supervisor, tracking
from runners.backends import make_backend
from runners.profile import load_profile
from runners.records import RunRecord
from runners.secrets import Redactor, resolve
from runners.spec import load_job


def _prepare(job_path: str, target: str | None, overrides: list[str], config: str | None):  # noqa: ANN202
    """Every check that needs no tracking server: job file, profile, target, secrets."""
    spec, workdir = load_job(job_path, overrides)
    profile = load_profile(config)
    name = profile.pick(target)
    raw = profile.targets[name]
    with make_backend(name, raw) as backend:
        backend.check(spec, name)
        backend.preflight(spec, workdir)
    redact = Redactor(list(resolve(spec.secrets, profile.vault).values()))
    return spec, workdir, profile, name, raw, redact


def plan(job_path: str, target: str | None, overrides: list[str], config: str | None) -> dict:
    """What submit would do (``--dry-run``): the resolved job, target and tracking server."""
    spec, workdir, profile, name, _, _ = _prepare(job_path, target, overrides, config)
    return {
        "job": spec.model_dump(mode="json"),
        "workdir": str(workdir),
        "target": name,
        "tracking_uri": profile.resolved_tracking_uri(),
    }


def submit(
    job_path: str, target: str | None, overrides: list[str], config: str | None, wait: bool = True
) -> RunRecord:
    """Validate everything, open the MLflow run, record it, and hand it to a supervisor.

    ``wait``: when the target has no room now, wait for it (else the run fails at once).
    """
    spec, workdir, profile, name, raw, redact = _prepare(job_path, target, overrides, config)
    spec_dict = redact.tree(spec.model_dump(mode="json"))  # the record and MLflow see no secret
    params = {k: str(v) for k, v in spec_dict["params"].items()}
    tracking_uri = profile.resolved_tracking_uri()
    run_id, experiment_id = tracking.start_run(
        tracking_uri, spec_dict, spec.experiment_name, name, workdir, params
    )
    record = RunRecord(
        run_id=run_id,
        job=spec.name,
        experiment_id=experiment_id,
        target=name,
        target_config=raw,
        tracking_uri=tracking_uri,
        spec=spec_dict,
        workdir=str(workdir),
        secrets=list(spec.secrets),
        vault=profile.vault,
        wait_for_capacity=wait,
    )
    record.save()
    supervisor.spawn(run_id)
    return record


def ensure_supervised(record: RunRecord) -> None:
    """Restart the run's supervisor if it died (runner killed, machine rebooted)."""
    if not record.finalized and not supervisor.is_supervised(record):
        supervisor.spawn(record.run_id)


def follow(run_id: str, out: TextIO = sys.stdout, keep_following: bool = True) -> RunRecord:
    """Print the run's log; with ``keep_following``, until the run ends."""
    record = records.load(run_id)
    ensure_supervised(record)
    pos = 0
    checked = time.monotonic()
    while True:
        done = record.terminal  # read the log once more after seeing the end
        try:
            with open(record.log_path, encoding="utf-8", errors="replace") as fh:
                fh.seek(pos)
                data = fh.read()
                pos = fh.tell()
        except FileNotFoundError:
            data = ""
        if data:
            out.write(data)
            out.flush()
        if done or not keep_following:
            return record
        time.sleep(0.1)
        record = records.load(run_id)
        if time.monotonic() - checked > 5:  # a supervisor that died is restarted while we watch
            ensure_supervised(record)
            checked = time.monotonic()
