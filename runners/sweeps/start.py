"""What ``hml sweep`` does before its supervisor takes over: check, open the parent run, record.

Every check a trial's submit would make about the job and its overrides is made here first,
with one sample of each searched value, so a typo in SPACE.yaml fails now (exit 2) and not
as N failed trials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hmlkit.extras import require
from runners.profile import load_profile, tracking_uri
from runners.progress import step
from runners.runs.secrets import Redactor, resolve
from runners.runs.submit import AUTO
from runners.runs.supervision import spawn_process
from runners.spec import load_job
from runners.sweeps.config import Choice, Int, SweepConfig, Uniform, load, override
from runners.sweeps.record import SweepRecord
from runners.tracking import ownership
from runners.tracking.probe import check_tracking

SUPERVISOR = "runners.sweeps.supervisor"


def sample(config: SweepConfig) -> list[str]:
    """One value of each searched name, as a trial would ``--set`` it."""
    items = []
    for name, d in config.space.items():
        value: Any
        if isinstance(d, Choice):
            value = d.values[0]
        elif isinstance(d, Int):
            value = d.low
        else:
            assert isinstance(d, Uniform)
            value = float(d.low)
        items.append(override(name, value))
    return items


def start(
    job_path: str,
    space_path: str | None,
    target: str | None,
    overrides: list[str],
    config: str | None,
    flags: dict[str, Any],
) -> SweepRecord:
    require("optuna", "hml sweep")
    sweep = load(job_path, space_path, flags)
    spec, workdir = load_job(job_path, overrides)
    load_job(job_path, [*overrides, *sample(sweep)])  # the searched names are ones --set takes
    profile = load_profile(config)
    chosen = AUTO if target == AUTO else profile.pick(target)
    uri = tracking_uri(profile)
    with step(f"checking tracking server {uri}"):
        check_tracking(uri, profile.probe_timeout_s, profile.source)
    vault = profile.vault.model_dump() if profile.vault else None
    public = Redactor(list(resolve(spec.secrets, vault).values())).tree(spec.model_dump(mode="json"))
    params = {
        "sweep.sampler": sweep.sampler,
        "sweep.pruner": sweep.pruner.kind,
        "sweep.max_trials": str(sweep.max_trials),
        "sweep.parallel": str(sweep.parallel),
        "sweep.objective": f"{sweep.objective.direction} {sweep.objective.metric}",
        **({"sweep.max_cost_usd": f"{sweep.max_cost_usd:g}"} if sweep.max_cost_usd else {}),
    }
    tags = {"hml.kind": "sweep"}  # no team: the trials spend, each its own run
    run_id, experiment_id = ownership.start_run(
        uri, public, spec.experiment_name, chosen, workdir, params, tags
    )
    source = Path(profile.source)
    record = SweepRecord(
        run_id=run_id,
        job=spec.name,
        job_path=str(Path(job_path).resolve()),
        overrides=overrides,
        target=chosen,
        config=str(source.resolve()) if source.is_file() else None,
        tracking_uri=uri,
        experiment_id=experiment_id,
        sweep=sweep.model_dump(mode="json"),
    )
    try:
        record.save()
        spawn_process(SUPERVISOR, run_id)
    except BaseException as exc:
        ownership.fail_run(uri, run_id, f"runner error before the sweep started: {exc}")
        raise
    return record
