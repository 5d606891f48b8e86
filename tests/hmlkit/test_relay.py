"""The tracking relay against real ``mlflow server`` processes: outages, a SIGKILLed relay, reads.

The relay always runs as it will on a GPU host: its own ``python3 -I -S`` process, which sees
neither this repository nor any installed package, so an import beyond the standard library fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import BIN, SERVER_ENV, MlflowServer, free_port, wait_http

pytestmark = pytest.mark.server  # starts MLflow servers and relays

if TYPE_CHECKING:
    from mlflow import MlflowClient

RELAY = Path(__file__).resolve().parents[2] / "hmlkit" / "node" / "relay.py"
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, so every connection is refused


@dataclass
class Relay:
    upstream: str
    journal: Path
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Relay:
        cmd = [
            sys.executable,
            "-I",
            "-S",
            str(RELAY),
            "--upstream",
            self.upstream,
            "--journal",
            str(self.journal),
        ]
        log = open(self.journal.parent / f"{self.journal.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]
        return self

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/_relay/status", timeout=5) as resp:
            return json.loads(resp.read())

    def wait_drained(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (status := self.status())["pending"]:
            assert time.monotonic() < deadline, f"relay still holds {status}"
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    started: list[Relay] = []
    yield started
    for relay in started:
        relay.kill(signal.SIGTERM)


def start_relay(relays: list[Relay], upstream: str, journal: Path) -> Relay:
    relays.append(Relay(upstream, journal).start())
    return relays[-1]


@pytest.fixture(scope="module")
def file_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server on MLflow's file store, which appends every metric it is sent, exact repeats included
    (the SQL store's primary key drops those): only against it can a test see a metric sent twice."""
    root = tmp_path_factory.mktemp("filestore")
    port = free_port()
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        (root / "mlruns").as_uri(),
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**SERVER_ENV, "MLFLOW_ALLOW_FILE_STORE": "true"},
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def new_run(tracking_uri: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"relay-{time.time_ns()}")
    return client.create_run(experiment).info.run_id


def journaling_client(relays: list[Relay], tracking_uri: str, journal: Path) -> tuple[str, MlflowClient]:
    """A new run on the server, and a client whose every write the relay journals: it cannot reach it."""
    from mlflow import MlflowClient

    return new_run(tracking_uri), MlflowClient(start_relay(relays, DEAD, journal).url)


def steps(tracking_uri: str, run_id: str, key: str) -> Counter:
    from mlflow import MlflowClient

    return Counter(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))


JOB = textwrap.dedent("""
    import sys, time
    import mlflow

    mlflow.log_params({"lr": "0.1", "layers": "3"})
    mlflow.set_tag("phase", "train")
    for step in range(int(sys.argv[1])):
        mlflow.log_metric("loss", 1 / (step + 1), step=step)  # runs/log-metric
        mlflow.log_metrics({"acc": step / 1000}, step=step)  # runs/log-batch
        if step % 40 == 0:
            with open(f"ckpt-{step}.txt", "w") as f:
                f.write(str(step))
            mlflow.log_artifact(f"ckpt-{step}.txt")
            print("ckpt", step, time.time(), flush=True)
        time.sleep(0.05)
    mlflow.set_tag("phase", "done")
""")


@pytest.mark.slow
def test_a_job_survives_a_server_outage_with_every_step_once(tmp_path: Path, relays: list[Relay]) -> None:
    server = MlflowServer(tmp_path / "mlflow", free_port()).start()
    try:
        run_id = new_run(server.url)
        relay = start_relay(relays, server.url, tmp_path / "journal")
        (tmp_path / "job.py").write_text(JOB)
        n = 300
        env = {**os.environ, "MLFLOW_TRACKING_URI": relay.url, "MLFLOW_RUN_ID": run_id}
        job = subprocess.Popen(
            [sys.executable, "job.py", str(n)],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert job.stdout is not None
        first = job.stdout.readline()  # the job is logging
        time.sleep(1)
        server.stop()
        down = time.time()
        time.sleep(1)
        # a run the relay has read before is still answered, so a job can find its artifact store
        with urllib.request.urlopen(f"{relay.url}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=5) as r:
            assert json.loads(r.read())["run"]["info"]["run_id"] == run_id
        time.sleep(8)
        assert relay.status()["pending"] > 0
        server.start()
        up = time.time()
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        relay.wait_drained()

        client = server.client()
        for key in ("loss", "acc"):
            assert steps(server.url, run_id, key) == Counter(range(n)), key
        run = client.get_run(run_id)
        assert run.data.params == {"lr": "0.1", "layers": "3"}
        assert run.data.tags["phase"] == "done"
        assert run.info.status == "FINISHED"  # the job's own end_run, journaled like any write
        logged_at = [float(line.split()[2]) for line in [first, *out.splitlines()] if line.startswith("ckpt")]
        assert any(down < t < up for t in logged_at), "no artifact was logged during the outage"
        names = {f.path for f in client.list_artifacts(run_id)}
        assert names == {f"ckpt-{s}.txt" for s in range(0, n, 40)}
        assert relay.status()["rejected"] == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_a_relay_killed_mid_replay_still_delivers_each_write_once(
    tmp_path: Path, relays: list[Relay], file_store: str
) -> None:
    from mlflow import MlflowClient

    journal = tmp_path / "journal"
    run_id, offline = journaling_client(relays, file_store, journal)
    n = 150
    for step in range(n):  # a tag between metrics keeps replay from merging them: many small units
        offline.log_metric(run_id, "m", step, step=step)
        offline.set_tag(run_id, "last", str(step))
    offline.log_param(run_id, "p", "1")
    relays[-1].kill()

    replaying = start_relay(relays, file_store, journal)
    while replaying.status()["pending"] > 2 * n // 3:
        time.sleep(0.02)
    replaying.kill()
    assert 0 < start_relay(relays, file_store, journal).status()["pending"] < 2 * n + 1
    relays[-1].wait_drained()

    assert steps(file_store, run_id, "m") == Counter(range(n))
    run = MlflowClient(file_store).get_run(run_id)
    assert run.data.tags["last"] == str(n - 1) and run.data.params == {"p": "1"}


def test_a_write_whose_ack_was_lost_is_not_applied_twice(
    tmp_path: Path, relays: list[Relay], file_store: str
) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    journal = tmp_path / "journal"
    run_id, offline = journaling_client(relays, file_store, journal)
    metrics = [Metric("m", float(s), 1_700_000_000_000 + s, s) for s in range(10)]
    offline.log_batch(run_id, metrics=metrics[:5])
    offline.log_batch(run_id, metrics=metrics[5:])
    relays[-1].kill()
    # The server applied the first batch, but the relay died before it heard so.
    MlflowClient(file_store).log_batch(run_id, metrics=metrics[:5])

    start_relay(relays, file_store, journal).wait_drained()
    assert steps(file_store, run_id, "m") == Counter(range(10))


def test_reads_are_forwarded(tmp_path: Path, relays: list[Relay], mlflow_server: MlflowServer) -> None:
    from mlflow import MlflowClient

    run_id = new_run(mlflow_server.url)
    direct = MlflowClient(mlflow_server.url)
    direct.log_metric(run_id, "m", 1.5, step=3)
    (tmp_path / "notes.txt").write_text("hello")
    direct.log_artifact(run_id, str(tmp_path / "notes.txt"))

    via = MlflowClient(start_relay(relays, mlflow_server.url, tmp_path / "journal").url)
    run = via.get_run(run_id)
    assert run.data.metrics == {"m": 1.5}
    assert [r.info.run_id for r in via.search_runs([run.info.experiment_id])] == [run_id]
    assert [(m.step, m.value) for m in via.get_metric_history(run_id, "m")] == [(3, 1.5)]
    assert Path(via.download_artifacts(run_id, "notes.txt", str(tmp_path))).read_text() == "hello"


def post(relay: Relay, endpoint: str, body: dict, **headers: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{relay.url}/api/2.0/mlflow/{endpoint}",
        json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_a_write_the_server_refuses_is_set_aside_and_its_neighbours_delivered(
    tmp_path: Path, relays: list[Relay], file_store: str
) -> None:
    journal = tmp_path / "journal"
    run_id, offline = journaling_client(relays, file_store, journal)
    offline.log_metric(run_id, "m", 0.0, step=0)
    post(
        relays[-1],
        "runs/log-metric",
        {"run_id": run_id, "key": "bad!key", "value": 1, "timestamp": 1, "step": 0},
    )
    offline.log_metric(run_id, "m", 1.0, step=1)  # replay merges the three, and the server refuses that batch
    relays[-1].kill()

    relay = start_relay(relays, file_store, journal)
    relay.wait_drained()
    assert steps(file_store, run_id, "m") == Counter(range(2))
    assert relay.status()["rejected"] == 1 and "bad!key" in (journal / "rejected.jsonl").read_text()


def test_without_a_server_writes_are_journaled_and_reads_refused(tmp_path: Path, relays: list[Relay]) -> None:
    relay = start_relay(relays, DEAD, tmp_path / "journal")
    tag = {"run_id": "r1", "key": "k", "value": "v"}
    assert post(relay, "runs/set-tag", tag, Authorization="Bearer s3cret") == (200, {})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{relay.url}/api/2.0/mlflow/runs/get?run_id=r1", timeout=5)
    assert err.value.code == 503 and json.loads(err.value.read())["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert relay.status()["pending"] == 1
    relay.kill()
    journal = (tmp_path / "journal" / "journal.jsonl").read_text()
    assert "runs/set-tag" in journal and "s3cret" not in journal  # credentials never reach the disk
    assert start_relay(relays, DEAD, tmp_path / "journal").status()["pending"] == 1


def test_a_torn_last_record_is_dropped_on_start(tmp_path: Path, relays: list[Relay]) -> None:
    relay = start_relay(relays, DEAD, tmp_path / "journal")
    post(relay, "runs/set-tag", {"run_id": "r1", "key": "k", "value": "v"})
    relay.kill()
    with open(tmp_path / "journal" / "journal.jsonl", "ab") as f:
        f.write(b'{"seq": 2, "method": "POS')  # a crash mid-append, before the fsync and the client's answer
    assert start_relay(relays, DEAD, tmp_path / "journal").status()["pending"] == 1


def test_a_journal_serves_one_relay_at_a_time(tmp_path: Path, relays: list[Relay]) -> None:
    start_relay(relays, DEAD, tmp_path / "journal")
    cmd = [sys.executable, "-I", "-S", str(RELAY), "--upstream", DEAD, "--journal", str(tmp_path / "journal")]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert second.returncode != 0 and "another relay is using the journal" in second.stderr
