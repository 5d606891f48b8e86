"""Which data made which run: run tags and MLflow dataset inputs, and the way back from a version.

Each input is logged as an MLflow dataset input of the run (name ``NAME@VERSION``, the
snapshot's digest, its S3 source and manifest), so the MLflow UI shows it on the run; the run
also carries ``hml.input.<input>=NAME@VERSION`` and ``hml.data.<name>.<version>=<input>``
tags, the second so ``hml data show`` finds every run that used a version with one query. A
model the job logs belongs to its run (``source_run_id``; a registered version's ``run_id``),
which is how a model's data is found: MLflow copies no run tag onto models.
"""

from __future__ import annotations

import json
from typing import Any

from hmlkit.errors import TrackingError
from runners.data.inputs import Input

DIGEST_CHARS = 32
"""MLflow keeps at most 36 characters of a dataset digest; the full one is in the source."""


def tags(inputs: list[Input]) -> dict[str, str]:
    out: dict[str, str] = {}
    for inp in inputs:
        out[f"hml.input.{inp.name}"] = inp.snapshot.ref
        out[f"hml.data.{inp.snapshot.name}.{inp.snapshot.version}"] = inp.name
    return out


def log_inputs(tracking_uri: str, run_id: str, inputs: list[Input]) -> None:
    if not inputs:
        return
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from runners.tracking.ownership import _client, _short

    datasets = []
    for inp in inputs:
        snap = inp.snapshot
        manifest = f"s3://{snap.where.bucket}/{snap.manifest_key}" if snap.version != "latest" else None
        source = {"uri": snap.source, "manifest": manifest, "digest": snap.digest, "store": snap.store}
        dataset = Dataset(
            name=snap.ref,
            digest=snap.digest[:DIGEST_CHARS],
            source_type="s3",
            source=json.dumps(source),
            profile=json.dumps({"objects": len(snap.objects), "bytes": snap.size}),
        )
        datasets.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", inp.name)]))
    try:
        _client(tracking_uri).log_inputs(run_id, datasets=datasets)
    except Exception as exc:  # mlflow raises many kinds
        raise TrackingError(f"tracking server {tracking_uri}: logging the inputs: {_short(exc)}") from exc


def runs_using(tracking_uri: str, name: str, version: str) -> list[dict[str, Any]]:
    """Every run (all experiments) that used ``name@version``, newest first."""
    from mlflow.entities import ViewType

    from runners.tracking.ownership import _client, _short

    try:
        client = _client(tracking_uri)
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        if not experiments:
            return []
        runs = client.search_runs(
            experiments,
            filter_string=f"tags.`hml.data.{name}.{version}` LIKE '%'",
            run_view_type=ViewType.ALL,
            order_by=["attributes.start_time DESC"],
            max_results=200,
        )
    except Exception as exc:
        raise TrackingError(f"tracking server {tracking_uri}: {_short(exc)}") from exc
    return [
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "input": r.data.tags.get(f"hml.data.{name}.{version}", ""),
            "job": r.data.tags.get("hml.job", ""),
        }
        for r in runs
    ]


def tag_models(tracking_uri: str, run_id: str, experiment_id: str, inputs: list[Input]) -> int:
    """Tag the models the run logged with its inputs' snapshot versions; how many were tagged."""
    if not inputs:
        return 0
    from runners.tracking.ownership import _client, _short

    wanted = {k: v for k, v in tags(inputs).items() if k.startswith("hml.input.")}
    try:
        client = _client(tracking_uri)
        models = client.search_logged_models(
            experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        for model in models:
            client.set_logged_model_tags(model.model_id, wanted)
    except Exception as exc:
        raise TrackingError(
            f"tracking server {tracking_uri}: tagging the run's models: {_short(exc)}"
        ) from exc
    return len(models)
