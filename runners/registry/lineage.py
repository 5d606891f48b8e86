"""Which data, code, environment and params made a model, written on its registered version.

MLflow copies no run tag onto a registered version, and a run's tags can change later; so the
lineage is written once, as ``hml.lineage.*`` tags of the version, when it is registered:

- ``run_id``, ``job``: the run that trained it (its params, metrics and log are there);
- ``inputs``: JSON ``{input: {ref, digest, source, store, manifest}}``, one per dataset snapshot
  (also ``hml.input.<input>=NAME@VERSION``, to search the versions a snapshot made);
- ``workdir_digest``: the tree hash of the code as submitted (the name ssh hosts stage it
  under), with ``git_commit`` when the workdir is a git checkout;
- ``env_digest`` and ``env_source``: the job's environment: a per-job environment's lock digest
  (the run's ``hml.env.digest`` tag, where the job declares one), else, on the local target (whose
  jobs run under hml's interpreter), a digest of that interpreter's installed packages;
- ``params_digest`` (and ``params`` as JSON when it fits a tag).

The code and environment digests are taken at submit (``submit_tags``): the job may write into
its workdir, and a supervisor restarted later might run under another interpreter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hmlkit.errors import HmlError, TrackingError
from runners.data.inputs import Input
from runners.tracking.ownership import _client, _short
from runners.training import ModelSpec

MAX_WORKDIR_BYTES = 1 << 40
"""The digest reads every file the job ships; the targets' own limits apply when they stage it."""
MAX_TAG_CHARS = 5000
ENV_TAG = "hml.env.digest"
"""A per-job environment's lock digest, on the run where the job declares an environment."""


def workdir_digest(workdir: Path) -> str:
    from hmlkit.ssh.staging import scan

    return scan(workdir, MAX_WORKDIR_BYTES).tree_hash


def packages_digest() -> str:
    """One hash over ``name==version`` of every distribution this interpreter has installed."""
    from importlib.metadata import distributions

    lines = sorted({f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in distributions()})
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def submit_tags(workdir: Path, target_kind: str) -> dict[str, str]:
    """The run tags a job with a ``model:`` section gets at submit (code, and a local job's packages)."""
    tags = {"hml.workdir.digest": workdir_digest(workdir)}
    if target_kind == "local":
        tags["hml.env.packages_digest"] = packages_digest()
    return tags


def version_tags(run: Any, inputs: list[Input], model: ModelSpec) -> dict[str, str]:
    """The registered version's tags: the lineage from the run and its inputs, and the declared gate."""
    run_tags = run.data.tags
    tags = {"hml.lineage.run_id": run.info.run_id, "hml.lineage.job": run_tags.get("hml.job", "")}
    found = {
        i.name: {
            "ref": i.snapshot.ref,
            "digest": i.snapshot.digest,
            "source": i.snapshot.source,
            "store": i.snapshot.store,
            "manifest": f"s3://{i.snapshot.where.bucket}/{i.snapshot.manifest_key}",
        }
        for i in inputs
        if i.snapshot.version != "latest"  # an ad-hoc s3:// prefix is no snapshot: nothing to retrain on
    }
    if found:
        tags["hml.lineage.inputs"] = json.dumps(found, sort_keys=True)
        tags.update({f"hml.input.{name}": d["ref"] for name, d in found.items()})
    for key, tag in (("workdir_digest", "hml.workdir.digest"), ("git_commit", "hml.git_commit")):
        if run_tags.get(tag):
            tags[f"hml.lineage.{key}"] = run_tags[tag]
    if run_tags.get(ENV_TAG):
        tags["hml.lineage.env_digest"], tags["hml.lineage.env_source"] = run_tags[ENV_TAG], ENV_TAG
    elif run_tags.get("hml.env.packages_digest"):
        tags["hml.lineage.env_digest"] = run_tags["hml.env.packages_digest"]
        tags["hml.lineage.env_source"] = "installed packages of hml's interpreter (local target)"
    params = json.dumps(run.data.params, sort_keys=True)
    tags["hml.lineage.params_digest"] = hashlib.sha256(params.encode()).hexdigest()
    if len(params) <= MAX_TAG_CHARS:
        tags["hml.lineage.params"] = params
    gate = model.model_dump(exclude={"name", "logged_model"}, exclude_none=True)
    tags.update({f"hml.gate.{k}": str(v) for k, v in gate.items()})
    return tags


def _logged_model(client: Any, run: Any, model: ModelSpec) -> Any:
    logged = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    chosen = [m for m in logged if model.logged_model in (None, m.name)]
    if len(chosen) == 1:
        return chosen[0]
    names = ", ".join(sorted(m.name for m in logged)) or "none"
    if not chosen:
        named = f" named {model.logged_model!r}" if model.logged_model else ""
        raise HmlError(
            f"run {run.info.run_id} logged no model{named} (its logged models: {names}); "
            "log one (mlflow.<flavor>.log_model) or fix model.logged_model"
        )
    raise HmlError(
        f"run {run.info.run_id} logged several models ({names}); "
        "name the one to register in model.logged_model"
    )


def register(tracking_uri: str, run_id: str, inputs: list[Input], model: ModelSpec) -> str:
    """Register the run's logged model as a new version of ``model.name`` with its lineage.

    Idempotent (the supervisor's finalize retries): a version of the run already there is
    returned as it is. Its version number; TrackingError for the server, HmlError when the run
    has no model to register."""
    from mlflow.exceptions import MlflowException

    try:
        client = _client(tracking_uri)
        done = client.search_model_versions(f"name = '{model.name}' and run_id = '{run_id}'")
        if done:
            return str(done[0].version)
        run = client.get_run(run_id)
        logged = _logged_model(client, run, model)
        try:
            client.create_registered_model(model.name, tags={"hml.gate.metric": model.metric})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        made = client.create_model_version(
            model.name,
            source=logged.model_uri,
            run_id=run_id,
            tags=version_tags(run, inputs, model),
            model_id=logged.model_id,
        )
    except HmlError:
        raise
    except Exception as exc:  # mlflow raises many kinds
        raise TrackingError(f"tracking server {tracking_uri}: registering the model: {_short(exc)}") from exc
    return str(made.version)
