"""Triggers: a new snapshot version or a schedule starts a run, once, however many watch.

``hml watch`` polls each job's ``triggers:`` (``runners.training``): for a dataset trigger the
latest snapshot version of the dataset, for a cron trigger the latest minute the schedule
names (within ``catch_up``). What is due has a key (``digits@v3``, ``cron 2026-12-04T03:00Z``);
before submitting, a watcher claims it in the tracking server by creating an experiment named
``hml-watch/<job>/<key>``: experiment names are unique, so exactly one watcher's create
succeeds, on any server (two watchers, or one restarted, never train a version twice). The
claim's tags say what became of it (``claimed``, ``submitted`` with the run id, ``failed``);
the run carries the claim's name (``hml.watch.key``), so a watcher killed between submitting
and tagging leaves a claim that the next one recognises. A claim left ``claimed`` for longer than
``STALE_S`` with no run (its watcher died before submitting) is retried under ``#2``, ``#3``...;
a submission refused as bad input is not retried (it would be refused again).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hmlkit.errors import HmlError, SpecError, TrackingError, UsageError
from hmlkit.profile import Profile
from runners.data.manifest import SnapshotRef, parse_ref
from runners.spec import JobSpec, load_job
from runners.tracking.ownership import _client, _short
from runners.training import Trigger, last_fire

CLAIM_PREFIX = "hml-watch/"
STALE_S = 600.0
"""A claim this old without a run: its watcher died between claiming and submitting."""
MAX_ATTEMPTS = 20


Submit = Callable[[list[str], dict[str, str]], str]
"""``submit(overrides, tags)``: submit the job pinned by ``overrides``, with more run tags; its run id."""


@dataclass(frozen=True)
class Watched:
    """A job file with its triggers, each dataset trigger resolved to the input it pins."""

    path: str
    spec: JobSpec
    triggers: list[tuple[Trigger, str | None]]


@dataclass(frozen=True)
class Due:
    key: str
    """What is due: ``digits@v3``, ``cron 2026-12-04T03:00Z``."""
    overrides: list[str]
    """The ``--set`` items that pin the job to it."""
    dataset: SnapshotRef | None = None


def _input_for(trigger: Trigger, spec: JobSpec) -> str:
    """The input a dataset trigger pins: the one named, else the one input that names the dataset."""
    if trigger.input is not None:
        if trigger.input not in spec.inputs:
            known = ", ".join(spec.inputs) or "none"
            raise ValueError(f"input: {trigger.input!r} is no input of the job (its inputs: {known})")
        return trigger.input
    naming = [
        name
        for name, ref in spec.inputs.items()
        if not ref.strip().startswith("s3://") and parse_ref(ref, name).name == trigger.dataset
    ]
    if len(naming) != 1:
        say = "no input names" if not naming else f"inputs {', '.join(naming)} name"
        raise ValueError(f"{say} dataset {trigger.dataset!r}; add input: NAME to say which one it pins")
    return naming[0]


def load_watched(path: str, on: str | None = None) -> Watched:
    """The job and its triggers (``on``: only a dataset trigger for dataset ``on``, which the job
    need not declare: ``hml retrain JOB --on NAME``); bad ones are refused naming the field."""
    spec, _ = load_job(path)
    triggers: list[Trigger] = list(spec.triggers)
    if on is not None:
        triggers = [t for t in triggers if t.dataset == on] or [Trigger(dataset=on)]
    if not triggers:
        raise SpecError(
            path, ["triggers: none; add e.g. triggers: [{dataset: digits}] or [{cron: '0 3 * * *'}]"]
        )
    resolved: list[tuple[Trigger, str | None]] = []
    problems = []
    for index, trigger in enumerate(triggers):
        if trigger.dataset is None:
            resolved.append((trigger, None))
            continue
        try:
            resolved.append((trigger, _input_for(trigger, spec)))
        except ValueError as exc:
            where = "--on" if on is not None and trigger not in spec.triggers else f"triggers.{index}"
            problems.append(f"{where}: {exc}")
    if problems:
        raise SpecError(path, problems)
    return Watched(path, spec, resolved)


def due(watched: Watched, profile: Profile, now: datetime, catch_up: timedelta) -> list[Due]:
    from runners.data import store

    found = []
    for trigger, input_name in watched.triggers:
        if trigger.dataset is None:  # a cron trigger (Trigger holds one kind or the other)
            at = last_fire(str(trigger.cron), now, catch_up)
            if at is not None:
                found.append(Due(f"cron {at:%Y-%m-%dT%H:%MZ}", []))
            continue
        snap = store.find(profile, SnapshotRef(name=trigger.dataset), f"{watched.path}: triggers")
        ref = SnapshotRef(name=snap.name, version=snap.version)
        found.append(Due(snap.ref, [f"inputs.{input_name}={snap.ref}"], ref))
    return found


class Claims:
    """The watchers' shared state: one experiment per claimed key, in the tracking server."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = _client(uri)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except Exception as exc:  # mlflow raises many kinds
            raise TrackingError(f"tracking server {self.uri}: {what}: {_short(exc)}") from exc

    def take(self, name: str) -> bool:
        """Create the claim; False when it exists (another watcher, or an earlier life, has it)."""
        from mlflow.exceptions import MlflowException

        tags = {"hml.watch.state": "claimed", "hml.watch.owner": self.owner, "hml.watch.at": str(time.time())}
        try:
            self.client.create_experiment(name, tags=tags)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise TrackingError(f"tracking server {self.uri}: claiming {name}: {_short(exc)}") from exc
        except Exception as exc:
            raise TrackingError(f"tracking server {self.uri}: claiming {name}: {_short(exc)}") from exc
        return True

    def get(self, name: str) -> Any | None:
        return self._call(f"reading {name}", self.client.get_experiment_by_name, name)

    def mark(self, name: str, **tags: str) -> None:
        found = self.get(name)
        if found is None:
            raise TrackingError(f"tracking server {self.uri}: the claim {name} was deleted meanwhile")
        for key, value in tags.items():
            self._call(
                f"marking {name}",
                self.client.set_experiment_tag,
                found.experiment_id,
                f"hml.watch.{key}",
                value,
            )

    def fail_orphan(self, name: str, run_id: str) -> None:
        """End the orphaned run FAILED and mark its claim failed-and-retryable, saying why."""
        from runners.tracking.ownership import fail_run

        why = "its watcher died between opening the run and recording it; the next attempt trains"
        fail_run(self.uri, run_id, why)
        self.mark(name, state="failed", reason=why, retry="yes", run_id="")

    def run_of(self, name: str) -> str | None:
        """A run a watcher submitted for the claim ``name`` (found by its tag), if any."""
        from mlflow.entities import ViewType

        experiments = self._call(
            "listing experiments", self.client.search_experiments, view_type=ViewType.ALL
        )
        ids = [e.experiment_id for e in experiments if not e.name.startswith(CLAIM_PREFIX)]
        if not ids:
            return None
        runs = self._call(
            "searching runs",
            self.client.search_runs,
            ids,
            filter_string=f"tags.`hml.watch.key` = '{name}'",
            run_view_type=ViewType.ALL,
            max_results=1,
        )
        return runs[0].info.run_id if runs else None


def _trained_by_hand(uri: str, job: str, ref: SnapshotRef | None) -> str | None:
    """A run of the job that used this snapshot version without any watcher (``hml submit``)."""
    if ref is None or ref.version is None:
        return None
    from runners.tracking.lineage import runs_using

    for run in runs_using(uri, ref.name, ref.version):
        if run["job"] == job and run["status"] != "FAILED":
            return str(run["run_id"])
    return None


def _owner_dead(owner: str) -> bool:
    """The claim's watcher (``host:pid``) ran on this machine and is gone."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _orphaned(owner: str, run_id: str) -> bool:
    """A watcher of this machine died between opening the MLflow run and recording it: the run
    has no record here, so no supervisor can ever start it."""
    from runners.state import records

    if not _owner_dead(owner):
        return False
    try:
        records.load(run_id)
    except HmlError:
        return True
    return False


def _keep_supervised(run_id: str) -> None:
    """A run this machine recorded whose watcher died before starting its supervisor (or whose
    supervisor died since) gets a new supervisor: a killed watcher never leaves a run RUNNING."""
    from runners.runs.supervision import ensure_supervised
    from runners.state import records

    try:
        record = records.load(run_id)
    except HmlError:
        return  # submitted from another machine: that machine's runner supervises it
    ensure_supervised(run_id, record.finalized)


def fire(watched: Watched, item: Due, claims: Claims, submit: Submit) -> str:
    """Claim ``item`` and submit the job for it, unless it was claimed or trained already; what happened."""
    base = f"{CLAIM_PREFIX}{watched.spec.name}/{item.key}"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        name = base if attempt == 1 else f"{base}#{attempt}"
        found = claims.get(name)
        if found is not None:
            state = found.tags.get("hml.watch.state", "")
            if state == "failed":
                if found.tags.get("hml.watch.retry") == "yes":
                    continue  # failed for a passing reason: the next attempt
                why = found.tags.get("hml.watch.reason", "")
                return f"{item.key}: its submission was refused ({why}); not retried"
            run_id = found.tags.get("hml.watch.run_id") or claims.run_of(name)
            if run_id and _orphaned(found.tags.get("hml.watch.owner", ""), run_id):
                claims.fail_orphan(name, run_id)
                continue  # its watcher died before the run was recorded: nothing will ever run it
            if run_id:
                if state != "submitted":
                    claims.mark(name, state="submitted", run_id=run_id)
                _keep_supervised(run_id)
                return f"{item.key}: trained already, by run {run_id}"
            age = time.time() - float(found.tags.get("hml.watch.at") or 0)
            owner = found.tags.get("hml.watch.owner", "")
            if state == "claimed" and age < STALE_S and not _owner_dead(owner):
                return f"{item.key}: claimed by {found.tags.get('hml.watch.owner', 'another watcher')}"
            continue  # its watcher died before submitting: the next attempt
        if not claims.take(name):
            return f"{item.key}: claimed by another watcher"
        by_hand = _trained_by_hand(claims.uri, watched.spec.name, item.dataset)
        if by_hand:
            claims.mark(name, state="submitted", run_id=by_hand)
            return f"{item.key}: trained already, by run {by_hand}"
        try:
            run_id = submit(item.overrides, {"hml.watch.key": name})
        except HmlError as exc:
            retry = "no" if isinstance(exc, UsageError) else "yes"
            claims.mark(name, state="failed", reason=str(exc).splitlines()[0][:4000], retry=retry)
            raise
        claims.mark(name, state="submitted", run_id=run_id)
        return f"{item.key}: submitted run {run_id}"
    return f"{item.key}: {MAX_ATTEMPTS} attempts failed; see the experiments {base}*"


def tick(
    watched: Watched,
    profile: Profile,
    claims: Claims,
    submit: Submit,
    catch_up: timedelta,
    now: datetime | None = None,
) -> list[str]:
    """One look at every trigger of one job; a line per thing due."""
    return [
        fire(watched, item, claims, submit)
        for item in due(watched, profile, now or datetime.now(UTC), catch_up)
    ]


def submitter(job_path: str, target: str | None, config: str | None) -> Submit:
    def run(overrides: list[str], tags: dict[str, str]) -> str:
        from runners.runs.submit import submit

        return submit(job_path, target, overrides, config, wait=True, tags=tags).run_id

    return run


def watch(
    paths: list[str],
    target: str | None,
    config: str | None,
    interval: float,
    catch_up: timedelta,
    once: bool,
    say: Callable[[str], None],
) -> None:
    """Every ``interval`` seconds, each job's triggers; until killed (``once``: one round).

    Bad job files are refused before the first round; a store or server that fails in a round
    is said and the next round tries again."""
    from runners.profile import load_profile, tracking_uri

    jobs = [load_watched(p) for p in paths]
    profile = load_profile(config)
    claims = Claims(tracking_uri(profile))
    state = f"state in {claims.uri} (experiments {CLAIM_PREFIX}*)"
    say(f"watching {len(jobs)} job(s) every {interval:g} s; {state}")
    while True:
        for job in jobs:
            try:
                for line in tick(job, profile, claims, submitter(job.path, target, config), catch_up):
                    say(f"{job.spec.name}: {line}")
            except HmlError as exc:
                say(f"{job.spec.name}: this round failed: {str(exc).splitlines()[0]}")
        if once:
            return
        time.sleep(interval)
