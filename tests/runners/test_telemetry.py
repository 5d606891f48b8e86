"""Run-end telemetry (runners/runs/telemetry.py) into a real moto CloudWatch and a node_exporter textfile
read back with Prometheus' own parser."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import yaml

from tests.awsbed import REGION
from tests.runners.helpers import submit_json, write_job


def _profile(tmp_path: Path, tracking_uri: str, telemetry: dict) -> dict[str, str]:
    profile = tmp_path / "hybridml.yaml"
    target = {"kind": "local", "gpu_hour_usd": 2.0, "telemetry": {"team": "ml", **telemetry}}
    profile.write_text(yaml.safe_dump({"tracking_uri": tracking_uri, "targets": {"local": target}}))
    return {"HML_CONFIG": str(profile)}


def _eventually(read, done, timeout: float = 30.0):
    """``read()`` once ``done`` holds for it: a run's end is published just after the run turns
    terminal (which is when ``hml submit`` returns), and CloudWatch is eventually consistent."""
    deadline = time.monotonic() + timeout
    while not done(got := read()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def _run(tmp_path: Path, env: dict[str, str], name: str, code: int) -> dict:
    job = write_job(
        tmp_path / name, name=name, run=f"{sys.executable} -c 'import time; time.sleep(1); exit({code})'"
    )
    summary, out = submit_json(str(job), env=env)
    assert summary["status"] == ("FINISHED" if code == 0 else "FAILED"), out.stderr
    return summary


def test_the_textfile_counts_every_ended_run_for_node_exporter(tmp_path, mlflow_server):
    from prometheus_client.parser import text_string_to_metric_families

    textfile = tmp_path / "textfile-collector" / "hybridml.prom"
    env = _profile(tmp_path, mlflow_server.url, {"prometheus_textfile": str(textfile)})
    for i, code in enumerate((0, 3, 0)):
        _run(tmp_path, env, f"job{i}", code)
    team = (("team", "ml"),)

    def read() -> dict:
        text = textfile.read_text() if textfile.exists() else ""
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    samples = _eventually(
        read, lambda got: sum(v for k, v in got.items() if k[0] == "hybridml_jobs_total") >= 3
    )
    assert textfile.stat().st_mode & 0o777 == 0o644
    assert samples[("hybridml_jobs_total", (("status", "FINISHED"), *team))] == 2
    assert samples[("hybridml_jobs_total", (("status", "FAILED"), *team))] == 1
    assert samples[("hybridml_jobs_failed_total", team)] == 1
    assert samples[("hybridml_run_seconds_total", team)] >= 3  # three runs of at least a second
    assert samples[("hybridml_gpu_seconds_total", team)] == 0  # CPU jobs


def test_cloudwatch_gets_the_metrics_the_alarm_reads(tmp_path, aws_bed, mlflow_server):
    import boto3

    env = _profile(tmp_path, mlflow_server.url, {"cloudwatch": {"region": REGION}})
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    _run(tmp_path, env, "ok", 0)
    _run(tmp_path, env, "bad", 1)
    cw = boto3.client("cloudwatch", region_name=REGION, endpoint_url=aws_bed.endpoint)
    stats = _eventually(
        lambda: cw.get_metric_statistics(
            Namespace="HybridML",
            MetricName="JobsFailed",  # no dimension, as components/monitoring.py's alarm reads it
            StartTime=start,
            EndTime=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
            Period=3600,
            Statistics=["Sum", "SampleCount"],
        )["Datapoints"],
        lambda got: sum(d["SampleCount"] for d in got) >= 2,
    )
    names = {m["MetricName"] for m in cw.list_metrics(Namespace="HybridML")["Metrics"]}
    assert {"JobsFailed", "Jobs", "GpuSeconds", "RunSeconds", "CostUsd"} <= names
    assert sum(d["Sum"] for d in stats) == 1 and sum(d["SampleCount"] for d in stats) == 2
    seconds = cw.get_metric_statistics(
        Namespace="HybridML",
        MetricName="RunSeconds",
        Dimensions=[{"Name": "Team", "Value": "ml"}],
        StartTime=start,
        EndTime=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        Period=3600,
        Statistics=["Sum"],
    )["Datapoints"]
    assert sum(d["Sum"] for d in seconds) >= 2
