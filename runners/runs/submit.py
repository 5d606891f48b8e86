"""What ``hml submit`` does before the job starts, and how any command follows a run."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from hmlkit.errors import (
    BackendError,
    HmlError,
    HostKeyError,
    NotReady,
    RunNotFound,
    TrackingError,
    UsageError,
)
from hmlkit.profile import TeamBudget
from runners.backends import backend_class, make_backend
from runners.backends.base import Backend
from runners.data.inputs import Input, far_bytes
from runners.data.inputs import resolve as resolve_inputs
from runners.data.inputs import save as save_inputs
from runners.envs import lock as envlock
from runners.profile import load_profile, tracking_uri
from runners.progress import step
from runners.registry.lineage import submit_tags
from runners.runs import budget
from runners.runs.jobenv import forwarded
from runners.runs.secrets import Redactor, resolve
from runners.runs.supervision import ensure_supervised, spawn
from runners.spec import JobSpec, load_job
from runners.state import record_files, records
from runners.state.records import RunRecord
from runners.tracking import environment, lineage, local_server, ownership
from runners.tracking.probe import check_tracking


@dataclass(frozen=True)
class Plan:
    """A submission checked end to end, before anything exists: what submit will run where."""

    spec: JobSpec
    workdir: Path
    target: str
    target_config: dict[str, Any]
    tracking_uri: str
    vault: dict[str, Any] | None
    redact: Redactor
    launch: dict[str, Any]
    """What the target would launch (instance type, market, hourly price), where it says."""
    placement: dict[str, str]
    """With ``--target auto``: each target tried and why it was or was not taken."""
    inputs: list[Input]
    """The job's datasets, resolved to exact snapshots."""
    transfer: dict[str, int]
    """Input bytes each candidate target would fetch from stores it is not near."""
    backend: Backend[Any]
    """The chosen target's backend, still open (its hosts reached): the supervisor's, or close it."""
    local_server: bool = True
    """The profile's ``local_server``: submit may start the embedded default's tracking server."""
    team: str = "default"
    """Whose budget the run spends: the job's ``team``, else the target's telemetry team."""
    budget: TeamBudget | None = None
    """That team's budget in the profile, if it has one."""

    @property
    def worst_case_usd(self) -> float | None:
        """Price x nodes x max_runtime on the chosen target; None: no bound (no max_runtime)."""
        return budget.worst_case_usd(self.spec, budget.hourly_usd(self.spec, self.target_config, self.launch))

    environment: str | None = None
    """The job's environment locked (``runners.envs.lock``): what every host builds and runs."""

    @property
    def placement_reason(self) -> str:
        """Why the run went where it did, and why each other target tried did not take it (the
        dry run's ``placement``, for whoever reads the run later)."""
        reason = self.placement.get(self.target, "")
        others = "; ".join(f"{name}: {why}" for name, why in self.placement.items() if name != self.target)
        return f"{reason}; not taken: {others}" if others else reason

    def public(self) -> dict[str, Any]:
        """The resolved job as it is shown and recorded: secret values redacted."""
        return self.redact.tree(self.spec.model_dump(mode="json"))


AUTO = "auto"


def plan(
    job_path: str, target: str | None, overrides: list[str], config: str | None, env_of: str | None = None
) -> Plan:
    """Every check that can come before a run exists: bad input first, then reachability.

    Job file, profile, target, secrets and what the target could ever hold are input (exit 2);
    then the tracking server and the target are asked, with short time-outs (NotReady, exit 2).
    ``--target auto`` tries the profile's ``placement`` in order and takes the first target
    with room now, else the first that could ever run the job (it then waits for room); a job
    with inputs tries first the targets near their stores (the fewest bytes to move). The
    job's ``environment:`` is resolved into its lock here (``env_of``: that earlier run's lock
    instead), a requirement no index has being bad input.
    """
    spec, workdir = load_job(job_path, overrides)
    profile = load_profile(config)
    vault = profile.vault.model_dump() if profile.vault else None
    redact = Redactor(list(resolve(spec.secrets, vault).values()))
    uri = tracking_uri(profile)
    names = profile.placement_order() if target == AUTO else [profile.pick(target)]
    if target != AUTO:  # what the kind cannot do is bad input: said before anything is asked
        backend_class(profile.targets[names[0]]["kind"]).check(spec, names[0])
    environment = _environment(spec, job_path, env_of, uri)
    inputs = resolve_inputs(spec.inputs, profile, job_path) if spec.inputs else []
    transfer = {n: far_bytes(profile.targets[n], inputs) for n in names} if inputs else {}
    if target == AUTO:  # data close to compute: the fewest bytes to move first, else placement order
        names = sorted(names, key=lambda n: transfer.get(n, 0))
    with step(f"checking tracking server {uri}"):
        check_tracking(uri, profile.probe_timeout_s, profile.source)
    placement: dict[str, str] = {}
    able: list[tuple[str, dict[str, Any], Backend[Any]]] = []
    chosen = None
    for name in names:
        backend = make_backend(name, profile.targets[name])
        try:
            _check_target(backend, name, spec, workdir)
            launch = backend.describe_plan(spec)
            busy = backend.room(spec) if target == AUTO else None
        except HmlError as exc:
            backend.close()
            if target != AUTO:
                _close(able)
                raise
            placement[name] = f"cannot run it: {str(exc).splitlines()[0]}"
            continue
        except BaseException:
            backend.close()
            _close(able)
            raise
        able.append((name, launch, backend))
        if busy is None:
            chosen = able[-1]
            placement[name] = "the first in placement order with room now" if target == AUTO else "chosen"
            if target == AUTO and inputs:
                placement[name] += f", {transfer[name]} input bytes from stores it is not near"
            break
        placement[name] = f"no room now: {busy}"
    if chosen is None:
        if not able:
            tried = "; ".join(f"{n}: {why}" for n, why in placement.items())
            raise NotReady(f"no target can run this job: {tried}")
        chosen = able[0]
        placement[chosen[0]] += "; every target is busy: the first that can run it waits for room"
    name, launch, backend = chosen
    _close([b for b in able if b is not chosen])
    team = spec.team or profile.target(name).telemetry.team
    return Plan(
        spec,
        workdir,
        name,
        profile.targets[name],
        uri,
        vault,
        redact,
        launch,
        placement,
        inputs,
        transfer,
        backend,
        profile.local_server,
        team,
        profile.budgets.get(team),
        environment,
    )


def _environment(spec: JobSpec, job_path: str, env_of: str | None, uri: str) -> str | None:
    """The lock the job runs in: that of run ``env_of`` (this machine's record, else MLflow's
    artifact), else the job file's ``environment:`` resolved now, else None (the host's Python)."""
    if env_of is None:
        if spec.environment is None:
            return None
        with step("resolving the job's environment"):
            return envlock.resolve(spec.environment, job_path)
    try:
        known = records.load(record_files.read(env_of)["run_id"])
        text, run_id = envlock.load(known.dir), known.run_id
    except RunNotFound:
        text, run_id = environment.from_run(uri, env_of)[0], env_of
    if text is None:
        raise UsageError(
            f"--env-of {env_of}: run {run_id[:8]} had no environment: (it ran on the host's Python)"
        )
    return text


def _close(able: list[tuple[str, dict[str, Any], Backend[Any]]]) -> None:
    for _, _, backend in able:
        backend.close()


def _check_target(backend: Backend[Any], name: str, spec: JobSpec, workdir: Path) -> None:
    backend.check(spec, name)
    with step(f"checking target {name!r}"):
        try:
            backend.preflight(spec, workdir)
        except (BackendError, TrackingError) as exc:
            if isinstance(exc, HostKeyError):
                raise
            raise NotReady(f"target {name!r}: {exc}") from None


Gate = Callable[["Plan"], None]
"""A caller's own admission check (a sweep's budget), run with the team's under the budget lock."""


def submit(
    job_path: str,
    target: str | None,
    overrides: list[str],
    config: str | None,
    wait: bool = True,
    tags: dict[str, str] | None = None,
    gate: Gate | None = None,
    on_run: Callable[[str], None] | None = None,
    env_of: str | None = None,
) -> RunRecord:
    """Validate everything, open the MLflow run, record it, and hand it to a supervisor.

    ``wait``: when the target has no room now, wait for it (else the run fails at once). A
    failure once the MLflow run exists ends it FAILED with the reason: no run is left RUNNING.
    ``tags``: more MLflow run tags (a sweep's trial, the watcher's claim key); ``on_run``: told
    the run id as soon as the MLflow run exists, before anything else can fail (a sweep keeps
    it with its trial).
    """
    p = plan(job_path, target, overrides, config, env_of)
    run_id = None
    try:
        for line in collect_garbage({p.target: p.target_config}):
            print(f"hml: gc: {line}", file=sys.stderr)
        spec_dict = p.public()
        params = {k: str(v) for k, v in spec_dict["params"].items()}
        worst = p.worst_case_usd
        run_tags = {
            "hml.placement": p.target,
            "hml.placement_reason": p.placement_reason,
            "hml.team": p.team,
            **({"hml.projected_usd": f"{worst:.6f}"} if worst is not None else {}),
            **lineage.tags(p.inputs),
            **(submit_tags(p.workdir, p.target_config["kind"]) if p.spec.model else {}),
            **(tags or {}),
        }
        artifacts = {}
        if p.environment is not None:
            run_tags["hml.env.digest"] = envlock.digest_of(p.environment)
            artifacts[envlock.ARTIFACT] = p.environment
        with budget.lock() if p.budget or gate else nullcontext():  # no budget: no waiting
            budget.admit(p.tracking_uri, p.team, p.budget, p.spec, worst)
            if gate is not None:
                gate(p)
            run_id, experiment_id = ownership.start_run(
                p.tracking_uri,
                spec_dict,
                p.spec.experiment_name,
                p.target,
                p.workdir,
                params,
                run_tags,
                artifacts,
            )
        if on_run is not None:
            on_run(run_id)
        record = RunRecord(
            run_id=run_id,
            job=p.spec.name,
            experiment_id=experiment_id,
            target=p.target,
            target_config=p.target_config,
            tracking_uri=p.tracking_uri,
            spec=spec_dict,
            workdir=str(p.workdir),
            secrets=list(p.spec.secrets),
            inherited_env=forwarded(),
            vault=p.vault,
            wait_for_capacity=wait,
        )
        record.save()
        save_inputs(record.dir, p.inputs)
        envlock.save(record.dir, p.environment)
        lineage.log_inputs(p.tracking_uri, run_id, p.inputs)
        if local_server.is_local_store(p.tracking_uri) and local_server.enabled(p.local_server):
            # not waited for here (the run was created in the store directly, once its schema
            # exists); the supervisor waits for it before the job starts (runners.runs.jobenv)
            local_server.start()
        spawn(run_id, p.backend)  # the supervisor's from here
    except BaseException as exc:
        p.backend.close()
        if run_id is not None:
            reason = f"runner error before the job started: {type(exc).__name__}: {exc}"
            ownership.fail_run(p.tracking_uri, run_id, reason)
        raise
    return record


def collect_garbage(targets: dict[str, dict[str, Any]]) -> list[str]:
    """Release what targets still hold for runs of this machine that are over or unknown."""

    def is_live(run_id: str) -> bool:
        try:
            return not records.load(run_id).terminal
        except HmlError:
            return False

    done = []
    for name, raw in targets.items():
        with make_backend(name, raw) as backend:
            done += [f"{name}: {line}" for line in backend.gc(is_live)]
    return done


FOLLOW_TICK_S = 0.02
RECORD_TICK_S = 0.2


def follow(run_id: str, out: TextIO = sys.stdout, keep_following: bool = True) -> RunRecord:
    """Print the run's log; with ``keep_following``, until the run ends."""
    record = records.load(run_id)
    ensure_supervised(record.run_id, record.finalized)
    pos = 0
    checked = loaded = time.monotonic()
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
            loaded = 0.0  # the supervisor writes its notes (the run's end) with the record
        if done or not keep_following:
            return record
        time.sleep(FOLLOW_TICK_S)  # the log is a local file: reading it often costs next to nothing
        if time.monotonic() - loaded > RECORD_TICK_S:
            record, loaded = records.load(run_id), time.monotonic()
        if time.monotonic() - checked > 5:  # a supervisor that died is restarted while we watch
            ensure_supervised(record.run_id, record.finalized)
            checked = time.monotonic()
