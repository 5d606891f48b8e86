"""Continuous training against a real MLflow server and a real moto store (tests/conftest.py).

A job with a ``model:`` section registers its logged model with its lineage and is gated
against the champion: better promoted, worse kept, decisions and numbers on the versions,
rollback restores the previous champion; a version without lineage, or trained on objects
the store no longer has, is refused naming the rule. Triggers: a new snapshot version trains
exactly once, with two watchers racing, and with a watcher killed mid-training and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.runners.helpers import HML, hml, submit_json, wait_finalized, write_job
from tests.runners.test_bad_input import assert_refused_without_debris, run_cli
from tests.runners.test_data import data, lake  # noqa: F401  (a fixture)

FINALIZE_S = 240.0
"""How long a run may take to close: its supervisor registers and gates it first, on a loaded machine."""

TRAIN = """
import os, pathlib, time, mlflow
score = float((pathlib.Path(os.environ["HML_INPUT_TRAIN"]) / "score.txt").read_text())
gate = os.environ.get("WAIT_FOR")
while gate and not os.path.exists(gate):
    time.sleep(0.1)
mlflow.log_metric("accuracy", score)
model = mlflow.initialize_logged_model(name="clf", source_run_id=mlflow.active_run().info.run_id)
mlflow.finalize_logged_model(model.model_id, "READY")
print("trained on", score, flush=True)
"""


def _setup(tmp_path: Path, lake, wait_for: Path | None = None) -> tuple[Path, str, str, str]:  # noqa: F811
    """A dataset (its first version: score 0.80) and a job training on it with a model gate;
    (job file, dataset name, model name, job name), each unique on the session's server."""
    s3, bucket, profile = lake
    tag = uuid.uuid4().hex[:8]
    dataset, model, job_name = f"scores-{tag}", f"clf-{tag}", f"clf-job-{tag}"
    _snapshot(lake, dataset, "0.80")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "train.py").write_text(TRAIN)
    envs = {"WAIT_FOR": str(wait_for)} if wait_for else {}
    job = write_job(
        work,
        name=job_name,
        run=f"{sys.executable} -B train.py",
        inputs={"train": f"{dataset}@v1"},
        params={"lr": 0.1},
        envs=envs,
        model={"name": model, "metric": "accuracy", "direction": "maximize", "margin": 0.01},
        triggers=[{"dataset": dataset}],
    )
    return job, dataset, model, job_name


def _snapshot(lake, dataset: str, score: str) -> str:  # noqa: F811
    s3, bucket, profile = lake
    s3.put_object(Bucket=bucket, Key=f"{dataset}/score.txt", Body=score.encode())
    return str(data(profile, "snapshot", dataset, f"s3://{bucket}/{dataset}")["ref"])


def _train(job: Path, profile: Path, ref: str, mlflow_server) -> dict:
    summary, out = submit_json(
        str(job), "--target", "local", "--set", f"inputs.train={ref}", env={"HML_CONFIG": str(profile)}
    )
    assert out.returncode == 0, out.stderr + hml("logs", summary["run_id"]).stdout
    return wait_finalized(mlflow_server.client(), summary["run_id"], timeout=FINALIZE_S).data.tags


def _model(profile: Path, *args: str) -> tuple[int, dict | list, str]:
    out = hml("--config", str(profile), "model", *args, "-o", "json")
    return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else {}), out.stderr


def _champion(mlflow_server, model: str) -> str:
    return str(mlflow_server.client().get_model_version_by_alias(model, "champion").version)


def test_better_is_promoted_worse_is_kept_and_rollback_restores(tmp_path, lake, mlflow_server):  # noqa: F811
    _, bucket, profile = lake
    job, dataset, model, job_name = _setup(tmp_path, lake)
    tags = _train(job, profile, f"{dataset}@v1", mlflow_server)
    assert tags["hml.model.version"] == f"{model}/1" and tags["hml.model.reason"].startswith("promoted")

    client = mlflow_server.client()
    first = client.get_model_version(model, "1")
    lineage = {k: v for k, v in first.tags.items() if k.startswith("hml.lineage.")}
    snap = data(profile, "show", f"{dataset}@v1")
    inputs = json.loads(lineage["hml.lineage.inputs"])
    assert inputs == {
        "train": {
            "ref": f"{dataset}@v1",
            "digest": snap["digest"],
            "source": f"s3://{bucket}/{dataset}/",
            "store": "lake",
            "manifest": snap["manifest"],
        }
    }
    assert first.run_id == lineage["hml.lineage.run_id"] and lineage["hml.lineage.job"] == job_name
    assert len(lineage["hml.lineage.workdir_digest"]) == 32 and len(lineage["hml.lineage.env_digest"]) == 64
    assert json.loads(lineage["hml.lineage.params"]) == {"lr": "0.1"}
    assert first.tags["hml.input.train"] == f"{dataset}@v1" and first.tags["hml.gate.decision"] == "promoted"
    assert _champion(mlflow_server, model) == "1"

    better = _snapshot(lake, dataset, "0.90")
    assert _train(job, profile, better, mlflow_server)["hml.model.reason"].startswith("promoted: better")
    second = client.get_model_version(model, "2")
    assert (
        second.tags["hml.gate.previous_champion"] == "1" and second.tags["hml.gate.champion_value"] == "0.8"
    )
    assert _champion(mlflow_server, model) == "2"

    within_margin = _snapshot(lake, dataset, "0.905")  # better, but by less than the margin (0.01)
    assert _train(job, profile, within_margin, mlflow_server)["hml.model.reason"].startswith(
        "kept: not better"
    )
    third = client.get_model_version(model, "3")
    assert third.tags["hml.gate.decision"] == "kept" and third.tags["hml.gate.value"] == "0.905"
    assert third.tags["hml.gate.champion_version"] == "2" and _champion(mlflow_server, model) == "2"

    rc, versions, err = _model(profile, "list", model)
    assert rc == 0, err
    assert [(v["version"], v["champion"], v["decision"]) for v in versions] == [
        ("3", False, "kept"),
        ("2", True, "promoted"),
        ("1", False, "promoted"),
    ]
    rc, listed, err = _model(profile, "list")
    assert rc == 0 and {"name": model, "champion": "2", "metric": "accuracy"} in listed, err
    rc, shown, err = _model(profile, "show", model)
    assert rc == 0 and shown["version"] == "2" and shown["lineage"]["inputs"], err

    rc, rolled, err = _model(profile, "rollback", model)
    assert rc == 0 and rolled == {"name": model, "from": "2", "to": "1"}, err
    assert _champion(mlflow_server, model) == "1"
    assert client.get_model_version(model, "2").tags["hml.gate.decision"] == "rolled back"
    rc, _, err = _model(profile, "rollback", model)  # version 1 replaced no champion
    assert rc == 2 and "nothing to roll back to" in err, err

    rc, decision, err = _model(profile, "promote", f"{model}@3")  # 0.905 beats the restored 0.80
    assert rc == 0 and decision["verdict"] == "promoted" and decision["champion"] == "1", err
    assert _champion(mlflow_server, model) == "3"


def test_a_version_without_lineage_is_refused_naming_the_rule(lake, mlflow_server):  # noqa: F811
    _, _, profile = lake
    client = mlflow_server.client()
    model = f"by-hand-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(f"by-hand-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "accuracy", 0.99)
    client.create_registered_model(model)
    client.create_model_version(
        model, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags={"hml.gate.metric": "accuracy"}
    )
    rc, decision, err = _model(profile, "promote", f"{model}@1")
    assert rc == 1 and decision["verdict"] == "refused", err
    assert decision["rules"] == ["model-lineage-complete"]
    assert "hml.lineage.inputs" in decision["reason"] and "hml.lineage.env_digest" in decision["reason"]
    version = client.get_model_version(model, "1")
    assert version.tags["hml.gate.rules"] == "model-lineage-complete" and version.aliases == []


def test_a_version_whose_snapshot_objects_are_gone_is_refused(tmp_path, lake, mlflow_server):  # noqa: F811
    s3, bucket, profile = lake
    job, dataset, model, _ = _setup(tmp_path, lake)
    _train(job, profile, f"{dataset}@v1", mlflow_server)
    better = _snapshot(lake, dataset, "0.95")
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "retention-current",
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "Expiration": {"Days": 1095},
                },
            ]
        },
    )
    # the run's supervisor gates it before the test could delete anything: train, then take the
    # champion back by hand and let the retention plan delete the version's objects
    _train(job, profile, better, mlflow_server)
    assert _model(profile, "rollback", model)[0] == 0
    for obj in json.loads(
        s3.get_object(Bucket=bucket, Key=f".hml-snapshots/{dataset}/v2.json")["Body"].read()
    )["objects"]:
        s3.delete_object(Bucket=bucket, Key=f"{dataset}/{obj['key']}", VersionId=obj["version_id"])
    rc, decision, err = _model(profile, "promote", f"{model}@2")
    assert rc == 1 and decision["verdict"] == "refused" and decision["rules"] == ["model-data-retained"], err
    assert f"{dataset}@v2: the store no longer has score.txt" in decision["reason"]
    assert "deletes objects 1095 days after they were written" in decision["reason"]
    assert _champion(mlflow_server, model) == "1"


def test_a_job_logging_no_model_succeeds_saying_so(tmp_path, lake, mlflow_server):  # noqa: F811
    _, _, profile = lake
    model = f"none-{uuid.uuid4().hex[:8]}"
    job = write_job(tmp_path, run="true", model={"name": model, "metric": "accuracy"})
    summary, out = submit_json(str(job), "--target", "local", env={"HML_CONFIG": str(profile)})
    run = wait_finalized(mlflow_server.client(), summary["run_id"], timeout=FINALIZE_S)
    assert out.returncode == 0 and run.info.status == "FINISHED", out.stderr
    assert run.data.tags["hml.model.reason"].startswith(
        f"not registered: run {summary['run_id']} logged no model"
    )
    assert len(run.data.tags["hml.workdir.digest"]) == 32
    rc, _, err = _model(profile, "list", model)
    assert rc == 2 and "no such registered model" in err, err
    rc, _, err = _model(profile, "show", "bad'name")
    assert rc == 2 and "no model name" in err, err


def _runs_of(mlflow_server, dataset: str, version: str) -> list:
    from mlflow.entities import ViewType

    client = mlflow_server.client()
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return list(client.search_runs(ids, filter_string=f"tags.`hml.data.{dataset}.{version}` LIKE '%'"))


def test_retrain_and_a_watch_round_train_each_new_version_once(tmp_path, lake, mlflow_server):  # noqa: F811
    _, _, profile = lake
    job, dataset, _, _ = _setup(tmp_path, lake)
    env = {"HML_CONFIG": str(profile)}
    out = hml("retrain", str(job), "--on", dataset, "--target", "local", env=env)
    assert out.returncode == 0 and f"{dataset}@v1: submitted run" in out.stdout, out.stderr
    again = hml("retrain", str(job), "--on", dataset, "--target", "local", env=env)
    assert again.returncode == 0 and f"{dataset}@v1: trained already" in again.stdout, again.stderr
    assert len(_runs_of(mlflow_server, dataset, "v1")) == 1

    _snapshot(lake, dataset, "0.85")
    for _ in range(2):
        out = hml("watch", str(job), "--once", "--target", "local", env=env)
        assert out.returncode == 0, out.stderr
    assert len(_runs_of(mlflow_server, dataset, "v2")) == 1
    assert f"{dataset}@v2: trained already" in out.stderr


def _watcher(job: Path, profile: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [HML, "watch", str(job), "--target", "local", "--interval", "0.3"],
        env={**os.environ, "HML_CONFIG": str(profile), "HML_AGENT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),  # noqa: SIM115 - the child holds it
        start_new_session=True,
    )


def _until(what: str, check, timeout: float = 180.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_two_watchers_racing_give_one_run(tmp_path, lake, mlflow_server):  # noqa: F811
    _, _, profile = lake
    job, dataset, _, _ = _setup(tmp_path, lake)
    watchers = [_watcher(job, profile, tmp_path / f"watch-{i}.log") for i in range(2)]
    try:
        [run] = _until("a run on v1", lambda: _runs_of(mlflow_server, dataset, "v1"))
        wait_finalized(mlflow_server.client(), run.info.run_id, timeout=FINALIZE_S)
        logs = _until(
            "both watchers saw v1 taken",
            lambda: all("trained already" in (tmp_path / f"watch-{i}.log").read_text() for i in range(2)),
        )
        assert logs
    finally:
        _stop(*watchers)
    assert len(_runs_of(mlflow_server, dataset, "v1")) == 1
    said = "".join((tmp_path / f"watch-{i}.log").read_text() for i in range(2))
    assert said.count(f"{dataset}@v1: submitted run") == 1, said


def test_a_watcher_killed_mid_training_resumes_without_retraining(tmp_path, lake, mlflow_server):  # noqa: F811
    _, _, profile = lake
    go = tmp_path / "go"
    job, dataset, model, _ = _setup(tmp_path, lake, wait_for=go)
    first = _watcher(job, profile, tmp_path / "first.log")
    second = None
    try:
        [run] = _until("a run on v1", lambda: _runs_of(mlflow_server, dataset, "v1"))
        # its supervisor runs once the watcher says so (killed sooner: the tests below)
        _until("the run handed over", lambda: "submitted run" in (tmp_path / "first.log").read_text())
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        second = _watcher(job, profile, tmp_path / "second.log")
        _until(
            "the new watcher saw v1 taken", lambda: "trained already" in (tmp_path / "second.log").read_text()
        )
        go.touch()
        wait_finalized(mlflow_server.client(), run.info.run_id, timeout=FINALIZE_S)
        _snapshot(lake, dataset, "0.90")  # it goes on watching
        [later] = _until("a run on v2", lambda: _runs_of(mlflow_server, dataset, "v2"))
        wait_finalized(mlflow_server.client(), later.info.run_id, timeout=FINALIZE_S)
        time.sleep(1.5)  # a few more rounds
    finally:
        _stop(*[p for p in (first, second) if p is not None])
    assert [r.info.run_id for r in _runs_of(mlflow_server, dataset, "v1")] == [run.info.run_id]
    assert len(_runs_of(mlflow_server, dataset, "v2")) == 1
    assert _champion(mlflow_server, model) == "2"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _claim(mlflow_server, job_name: str, key: str, run_id: str | None = None) -> str:
    """The claim a watcher of this machine left when it was killed (its pid now dead), and the
    watcher's tag on ``run_id``: what the watcher had done before the kill."""
    import socket

    name = f"hml-watch/{job_name}/{key}"
    owner = f"{socket.gethostname()}:{_dead_pid()}"
    tags = {"hml.watch.state": "claimed", "hml.watch.owner": owner, "hml.watch.at": str(time.time())}
    mlflow_server.client().create_experiment(name, tags=tags)
    if run_id:
        mlflow_server.client().set_tag(run_id, "hml.watch.key", name)
    return name


def test_a_watcher_killed_before_the_supervisor_started_leaves_no_run_running(tmp_path, lake, mlflow_server):  # noqa: F811
    """Killed after recording the run but before its supervisor started: the next watcher
    starts one, and the run trains once and closes."""
    _, _, profile = lake
    go = tmp_path / "go"
    job, dataset, _, job_name = _setup(tmp_path, lake, wait_for=go)
    env = {"HML_CONFIG": str(profile)}
    summary, out = submit_json(str(job), "--target", "local", "--detach", env=env)
    assert out.returncode == 0, out.stderr
    record = Path(summary["log"]).parent / "record.json"
    pid = _until("the supervisor", lambda: json.loads(record.read_text()).get("supervisor_pid"))
    os.kill(pid, signal.SIGKILL)
    _claim(mlflow_server, job_name, f"{dataset}@v1", summary["run_id"])

    out = hml("watch", str(job), "--once", "--target", "local", env=env)
    assert out.returncode == 0 and f"trained already, by run {summary['run_id']}" in out.stderr, out.stderr
    restarted = lambda: json.loads(record.read_text()).get("supervisor_pid") not in (pid, None)  # noqa: E731
    _until("a new supervisor", restarted)
    go.touch()
    finished = wait_finalized(mlflow_server.client(), summary["run_id"], timeout=FINALIZE_S)
    assert finished.info.status == "FINISHED", finished.data.tags.get("hml.reason")
    assert [r.info.run_id for r in _runs_of(mlflow_server, dataset, "v1")] == [summary["run_id"]]


def test_a_watcher_killed_before_recording_its_run_fails_it_and_trains_again(tmp_path, lake, mlflow_server):  # noqa: F811
    """Killed between opening the MLflow run and recording it: nothing could ever run it, so
    the next watcher ends it FAILED saying why and trains the version under a new claim."""
    _, _, profile = lake
    job, dataset, _, job_name = _setup(tmp_path, lake)
    client = mlflow_server.client()
    experiment = client.get_experiment_by_name("tests")  # the job's, made by the tests before
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("tests")
    orphan = client.create_run(experiment_id, tags={f"hml.data.{dataset}.v1": "x"}).info.run_id
    claim = _claim(mlflow_server, job_name, f"{dataset}@v1", orphan)

    out = hml("watch", str(job), "--once", "--target", "local", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0 and f"{dataset}@v1: submitted run" in out.stderr, out.stderr
    dead = client.get_run(orphan)
    assert dead.info.status == "FAILED" and "watcher died" in dead.data.tags["hml.reason"]
    assert client.get_experiment_by_name(claim).tags["hml.watch.state"] == "failed"
    [again] = [r for r in _runs_of(mlflow_server, dataset, "v1") if r.info.run_id != orphan]
    assert again.data.tags["hml.watch.key"] == f"{claim}#2"
    assert wait_finalized(client, again.info.run_id, timeout=FINALIZE_S).info.status == "FINISHED"


def test_a_cron_trigger_fires_once_per_scheduled_time(tmp_path, lake, mlflow_server, monkeypatch):  # noqa: F811
    from hmlkit.profile import Profile
    from runners.profile import load_profile
    from runners.runs import triggers

    _, _, profile = lake
    work = tmp_path / "cron"
    job = write_job(
        work, name=f"nightly-{uuid.uuid4().hex[:8]}", run="true", triggers=[{"cron": "0 3 * * *"}]
    )
    monkeypatch.setenv("HML_CONFIG", str(profile))
    loaded: Profile = load_profile(None)
    watched = triggers.load_watched(str(job))
    claims = triggers.Claims(mlflow_server.url)
    submit = triggers.submitter(str(job), "local", None)
    at = datetime(2026, 12, 4, 3, 20, tzinfo=UTC)
    said = [
        triggers.tick(watched, loaded, claims, submit, timedelta(hours=1), now=at + timedelta(minutes=m))
        for m in (0, 5)
    ]
    assert said[0][0].startswith("cron 2026-12-04T03:00Z: submitted run"), said
    assert said[1][0].startswith("cron 2026-12-04T03:00Z: trained already"), said
    assert (
        triggers.tick(watched, loaded, claims, submit, timedelta(hours=1), now=at + timedelta(hours=2)) == []
    )


@pytest.mark.parametrize(
    "fields,word",
    [
        ({"triggers": [{"dataset": "other"}]}, "triggers.0: no input names dataset 'other'"),
        ({"triggers": [{"cron": "0 25 * * *"}]}, "cron hour '25'"),
        ({"triggers": [{"dataset": "d", "cron": "* * * * *"}]}, "give either dataset"),
        ({"model": {"name": "m", "metric": "acc", "direction": "up"}}, "model.direction"),
    ],
    ids=["unknown input", "bad cron", "two kinds", "bad direction"],
)
def test_bad_triggers_and_model_sections_exit_2(tmp_path, hml_home, fields, word):
    job = write_job(tmp_path, run="true", inputs={"train": "d@v1"}, **fields)
    rc, _, err = run_cli("watch", str(job), "--once")
    assert_refused_without_debris(rc, err, word, hml_home)


def test_a_per_job_environment_digest_is_preferred_to_the_packages(mlflow_server):
    from runners.registry.lineage import version_tags
    from runners.training import ModelSpec

    client = mlflow_server.client()
    experiment = client.create_experiment(f"env-{uuid.uuid4().hex[:8]}")
    tags = {"hml.job": "j", "hml.env.packages_digest": "p" * 64, "hml.workdir.digest": "w" * 32}
    plain = client.create_run(experiment, tags=tags).info.run_id
    locked = client.create_run(experiment, tags={**tags, "hml.env.digest": "lock-digest"}).info.run_id
    model = ModelSpec(name="m", metric="accuracy", direction="minimize")

    got = version_tags(client.get_run(locked), [], model)
    assert (
        got["hml.lineage.env_digest"] == "lock-digest" and got["hml.lineage.env_source"] == "hml.env.digest"
    )
    assert "hml.lineage.inputs" not in got and got["hml.gate.direction"] == "minimize"
    fallback = version_tags(client.get_run(plain), [], model)
    assert (
        fallback["hml.lineage.env_digest"] == "p" * 64
        and "local target" in fallback["hml.lineage.env_source"]
    )


def test_a_claim_whose_watcher_died_before_submitting_is_taken_over(tmp_path, lake, mlflow_server):  # noqa: F811
    _, _, profile = lake
    job, dataset, _, job_name = _setup(tmp_path, lake)
    client = mlflow_server.client()
    claim = f"hml-watch/{job_name}/{dataset}@v1"
    client.create_experiment(claim, tags={"hml.watch.state": "claimed", "hml.watch.owner": "gone:1"})
    env = {"HML_CONFIG": str(profile)}

    fresh = client.get_experiment_by_name(claim).experiment_id
    client.set_experiment_tag(fresh, "hml.watch.at", str(time.time()))
    out = hml("retrain", str(job), "--on", dataset, "--target", "local", env=env)
    assert out.returncode == 0 and f"{dataset}@v1: claimed by gone:1" in out.stdout, out.stderr
    assert _runs_of(mlflow_server, dataset, "v1") == []

    client.set_experiment_tag(fresh, "hml.watch.at", str(time.time() - 3600))  # its watcher died an hour ago
    out = hml("retrain", str(job), "--on", dataset, "--target", "local", env=env)
    assert out.returncode == 0 and f"{dataset}@v1: submitted run" in out.stdout, out.stderr
    [run] = _runs_of(mlflow_server, dataset, "v1")
    taken = client.get_experiment_by_name(f"{claim}#2").tags
    assert taken["hml.watch.state"] == "submitted" and taken["hml.watch.run_id"] == run.info.run_id
    assert run.data.tags["hml.watch.key"] == f"{claim}#2"
