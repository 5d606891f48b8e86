"""What sweeps and budgets read back from the tracking server: a trial's metric as it is
logged, the runs of a sweep or of a month, and the parent run's running best.

mlflow's client, imported inside functions as in ``ownership``: only sweeps and teams with a
budget pay for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from hmlkit.errors import TrackingError
from runners.tracking.ownership import _client, _short

TERMINAL = ("FINISHED", "FAILED", "KILLED")


def _call(tracking_uri: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # mlflow raises many kinds: connection, REST, sqlalchemy
        raise TrackingError(f"tracking server {tracking_uri}: {what}: {_short(exc)}") from exc


def metric_history(tracking_uri: str, run_id: str, key: str) -> dict[int, float]:
    """Every value the run logged for ``key``, by step (the last one logged at a step wins)."""
    client = _client(tracking_uri)
    found = _call(tracking_uri, f"metric {key}", client.get_metric_history, run_id, key)
    history: dict[int, float] = {}
    for m in sorted(found, key=lambda m: (m.step, m.timestamp)):
        history[int(m.step)] = float(m.value)
    return history


def update_run(
    tracking_uri: str,
    run_id: str,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, str] | None = None,
    step: int = 0,
) -> None:
    from mlflow.entities import Metric, Param, RunTag

    client = _client(tracking_uri)
    now = int(time.time() * 1000)
    _call(
        tracking_uri,
        "update run",
        client.log_batch,
        run_id,
        metrics=[Metric(k, v, now, step) for k, v in (metrics or {}).items()],
        params=[Param(k, v) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )


def tagged_runs(tracking_uri: str, experiment_ids: list[str], tags: dict[str, str]) -> list[str]:
    """Ids of the runs (any state) carrying every tag given: a trial's run found by its tags."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    client = _client(tracking_uri)
    found = _call(tracking_uri, "search runs", client.search_runs, experiment_ids, where, max_results=1000)
    return [r.info.run_id for r in found]


@dataclass(frozen=True)
class Spend:
    team: str
    target: str
    status: str
    usd: float
    """A run that ended: what it cost (a cloud bill where there is one); one still running:
    its projected worst case (``hml.projected_usd``), what it may still cost."""


def month_spend(tracking_uri: str, since: float, team: str | None = None) -> list[Spend]:
    """Each run started since ``since`` (epoch seconds) that names a team, or the one ``team``."""
    from mlflow.entities import ViewType

    client = _client(tracking_uri)
    experiments = _call(tracking_uri, "list experiments", client.search_experiments, view_type=ViewType.ALL)
    ids = [e.experiment_id for e in experiments]
    where = f"attributes.start_time >= {int(since * 1000)}"
    where += f" and tags.`hml.team` = '{team}'" if team else " and tags.`hml.team` LIKE '%'"
    spent: list[Spend] = []
    for start in range(0, len(ids), 100):  # the server takes at most 100 experiments a search
        token = None
        while True:
            page = _call(
                tracking_uri,
                "search runs",
                client.search_runs,
                ids[start : start + 100],
                where,
                run_view_type=ViewType.ALL,
                max_results=1000,
                page_token=token,
            )
            spent += [_spend(r) for r in page]
            token = page.token
            if not token:
                break
    return spent


def _spend(run: Any) -> Spend:
    tags, metrics, status = run.data.tags, run.data.metrics, run.info.status
    if status in TERMINAL:
        usd = metrics.get("hml.instance_cost_usd", metrics.get("hml.cost_usd", 0.0))
    else:
        usd = float(tags.get("hml.projected_usd") or 0.0)
    return Spend(tags.get("hml.team", ""), tags.get("hml.target", ""), status, float(usd))
