"""Run-end telemetry for the monitors the stacks provision (components/monitoring.py).

When a run ends, the supervisor publishes what the alarms and dashboards read, wherever the
target's ``telemetry`` says (hmlkit/profile.py): CloudWatch on AWS, a node_exporter textfile
on-prem. Telemetry never fails a run: a problem is noted in the run's log and the run goes on.

The metric contract (the monitoring component's alarms, rules and dashboards name these):

| CloudWatch (namespace ``HybridML``) | Prometheus textfile | what |
| --- | --- | --- |
| ``JobsFailed`` (no dimension: the alarm's) | ``hybridml_jobs_failed_total{team}`` | 1 per FAILED run |
| ``Jobs`` {Team, Status} | ``hybridml_jobs_total{team,status}`` | 1 per ended run |
| ``GpuSeconds`` {Team} | ``hybridml_gpu_seconds_total{team}`` | GPUs x nodes x running seconds |
| ``RunSeconds`` {Team} | ``hybridml_run_seconds_total{team}`` | running seconds |
| ``CostUsd`` {Team} | ``hybridml_cost_usd_total{team}`` | the run's cost (hml.cost_usd) |
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmlkit.profile import CloudWatchTelemetry, Telemetry
from runners.backends.base import Usage
from runners.state.records import RunRecord

_HELP = {
    "hybridml_jobs_total": "Runs that ended, by team and status.",
    "hybridml_jobs_failed_total": "Runs that ended FAILED.",
    "hybridml_gpu_seconds_total": "GPU seconds used by runs (GPUs x nodes x running seconds).",
    "hybridml_run_seconds_total": "Running seconds of runs.",
    "hybridml_cost_usd_total": "Cost of runs in USD, as hml.cost_usd.",
}
_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


@dataclass(frozen=True)
class RunEnd:
    team: str
    status: str
    run_seconds: float
    gpu_seconds: float
    cost_usd: float

    @classmethod
    def of(cls, rec: RunRecord, team: str) -> RunEnd:
        seconds = max((rec.ended_at or time.time()) - (rec.started_at or rec.ended_at or time.time()), 0.0)
        gpu_seconds = Usage(**rec.usage).gpu_hours(seconds) * 3600 if rec.usage else 0.0
        return cls(team, rec.status, seconds, gpu_seconds, rec.cost_usd)


def publish(rec: RunRecord, telemetry: Telemetry) -> list[str]:
    """Publish the run's end where ``telemetry`` says; the problems met (empty: all sent)."""
    end = RunEnd.of(rec, rec.spec.get("team") or telemetry.team)  # the team whose budget it spent
    problems = []
    if telemetry.cloudwatch is not None:
        try:
            to_cloudwatch(end, telemetry.cloudwatch)
        except Exception as exc:  # boto3's errors, a missing extra: noted, never fatal to the run
            problems.append(f"CloudWatch: {exc}")
    if telemetry.prometheus_textfile:
        try:
            to_textfile(end, Path(telemetry.prometheus_textfile).expanduser())
        except OSError as exc:
            problems.append(f"textfile {telemetry.prometheus_textfile}: {exc}")
    return problems


def to_cloudwatch(end: RunEnd, config: CloudWatchTelemetry) -> None:
    from hmlkit.extras import require

    boto3: Any = require("boto3", "CloudWatch telemetry")
    team = [{"Name": "Team", "Value": end.team}]
    data = [
        {"MetricName": "JobsFailed", "Value": float(end.status == "FAILED"), "Unit": "Count"},
        {
            "MetricName": "Jobs",
            "Dimensions": [*team, {"Name": "Status", "Value": end.status}],
            "Value": 1.0,
            "Unit": "Count",
        },
        {"MetricName": "GpuSeconds", "Dimensions": team, "Value": end.gpu_seconds, "Unit": "Seconds"},
        {"MetricName": "RunSeconds", "Dimensions": team, "Value": end.run_seconds, "Unit": "Seconds"},
        {"MetricName": "CostUsd", "Dimensions": team, "Value": end.cost_usd, "Unit": "None"},
    ]
    boto3.client("cloudwatch", region_name=config.region).put_metric_data(
        Namespace=config.namespace, MetricData=data
    )


def to_textfile(end: RunEnd, path: Path) -> None:
    """Add the run to the counters in node_exporter's textfile format, under a lock (several
    supervisors end runs at once), replacing the file atomically so a scrape never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    team = f'team="{end.team}"'
    adds = {
        f'hybridml_jobs_total{{{team},status="{end.status}"}}': 1.0,
        f"hybridml_jobs_failed_total{{{team}}}": float(end.status == "FAILED"),
        f"hybridml_gpu_seconds_total{{{team}}}": end.gpu_seconds,
        f"hybridml_run_seconds_total{{{team}}}": end.run_seconds,
        f"hybridml_cost_usd_total{{{team}}}": end.cost_usd,
    }
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        samples = _read_samples(path)
        for key, value in adds.items():
            samples[key] = samples.get(key, 0.0) + value
        lines = []
        for name, help_ in _HELP.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            lines += [f"{k} {v:g}" for k, v in sorted(samples.items()) if k.partition("{")[0] == name]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o644)  # node_exporter runs as its own user; counts are not secret
        os.replace(tmp, path)


def _read_samples(path: Path) -> dict[str, float]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) in _HELP:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples
