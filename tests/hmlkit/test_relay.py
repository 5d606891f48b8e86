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
TOKEN = "job-token-0123456789abcdef"
"""The job's token, as the runner puts it into the job's environment (and so the relay's)."""


@pytest.fixture(autouse=True)
def job_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process is the job: its MLflow client sends the token, as a job's does."""
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)


@dataclass
class Relay:
    upstream: str
    journal: Path
    run_id: str = ""
    credentials: str = ""
    redact: dict[str, str] | None = None
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
            "--credentials-stdin",
            "--redact",
            *(self.redact or {}),
        ]
        env = {"MLFLOW_TRACKING_TOKEN": TOKEN, "MLFLOW_RUN_ID": self.run_id, **(self.redact or {})}
        log = open(self.journal.parent / f"{self.journal.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
        log.close()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(self.credentials)
        self.proc.stdin.close()
        self.port = json.loads(self.proc.stdout.readline())["port"]
        return self

    def status(self) -> dict:
        req = urllib.request.Request(
            f"{self.url}/_relay/status", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
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


def start_relay(relays: list[Relay], upstream: str, journal: Path, run_id: str = "", **kw: object) -> Relay:
    """A relay for the job of run ``run_id`` (``MLFLOW_RUN_ID`` in its environment)."""
    relays.append(Relay(upstream, journal, run_id, **kw).start())  # type: ignore[arg-type]
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

    run_id = new_run(tracking_uri)
    return run_id, MlflowClient(start_relay(relays, DEAD, journal, run_id).url)


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
        relay = start_relay(relays, server.url, tmp_path / "journal", run_id)
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
        with urllib.request.urlopen(get(relay, f"runs/get?run_id={run_id}"), timeout=5) as r:
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

    via = MlflowClient(start_relay(relays, mlflow_server.url, tmp_path / "journal", run_id).url)
    run = via.get_run(run_id)
    assert run.data.metrics == {"m": 1.5}
    assert [r.info.run_id for r in via.search_runs([run.info.experiment_id])] == [run_id]
    assert [(m.step, m.value) for m in via.get_metric_history(run_id, "m")] == [(3, 1.5)]
    assert Path(via.download_artifacts(run_id, "notes.txt", str(tmp_path))).read_text() == "hello"


def post(relay: Relay, endpoint: str, body: dict, **headers: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{relay.url}/api/2.0/mlflow/{endpoint}",
        json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}", **headers},
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
    relay = start_relay(
        relays,
        DEAD,
        tmp_path / "journal",
        "r1",
        credentials="MLFLOW_TRACKING_PASSWORD=pw-s3cret",
        redact={"HML_SECRET_X": "vault-value-77"},
    )
    tag = {"run_id": "r1", "key": "k", "value": "v vault-value-77"}
    assert post(relay, "runs/set-tag", tag) == (200, {})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(get(relay, "runs/get?run_id=r1"), timeout=5)
    assert err.value.code == 503 and json.loads(err.value.read())["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert relay.status()["pending"] == 1
    relay.kill()
    journal = (tmp_path / "journal" / "journal.jsonl").read_text()
    assert "runs/set-tag" in journal
    assert TOKEN not in journal and "s3cret" not in journal  # credentials never reach the disk
    assert "vault-value-77" not in journal and "v ***" in journal  # nor the secrets the job logs
    assert start_relay(relays, DEAD, tmp_path / "journal").status()["pending"] == 1


def get(relay: Relay, endpoint: str, token: str = TOKEN) -> urllib.request.Request:
    return urllib.request.Request(
        f"{relay.url}/api/2.0/mlflow/{endpoint}", headers={"Authorization": f"Bearer {token}"}
    )


def test_a_torn_last_record_is_dropped_on_start(tmp_path: Path, relays: list[Relay]) -> None:
    relay = start_relay(relays, DEAD, tmp_path / "journal", "r1")
    post(relay, "runs/set-tag", {"run_id": "r1", "key": "k", "value": "v"})
    relay.kill()
    with open(tmp_path / "journal" / "journal.jsonl", "ab") as f:
        f.write(b'{"seq": 2, "method": "POS')  # a crash mid-append, before the fsync and the client's answer
    assert start_relay(relays, DEAD, tmp_path / "journal").status()["pending"] == 1


def test_a_journal_serves_one_relay_at_a_time(tmp_path: Path, relays: list[Relay]) -> None:
    start_relay(relays, DEAD, tmp_path / "journal")
    cmd = [sys.executable, "-I", "-S", str(RELAY), "--upstream", DEAD, "--journal", str(tmp_path / "journal")]
    env = {"MLFLOW_TRACKING_TOKEN": TOKEN}
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    assert second.returncode != 0 and "another relay is using the journal" in second.stderr


def call(
    relay: Relay, method: str, path: str, body: bytes | None = None, token: str = TOKEN
) -> tuple[int, dict]:
    """One request to the relay as any local process could make it; (status, JSON answer)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(relay.url + path, body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_relay_needs_its_jobs_token_to_start(tmp_path: Path) -> None:
    cmd = [sys.executable, "-I", "-S", str(RELAY), "--upstream", DEAD, "--journal", str(tmp_path / "j")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={})
    assert out.returncode != 0 and "MLFLOW_TRACKING_TOKEN" in out.stderr


def test_only_the_jobs_token_is_served(
    tmp_path: Path, relays: list[Relay], mlflow_server: MlflowServer
) -> None:
    run_id = new_run(mlflow_server.url)
    relay = start_relay(relays, mlflow_server.url, tmp_path / "journal", run_id)
    tag = json.dumps({"run_id": run_id, "key": "who", "value": "intruder"}).encode()
    tries = [
        ("GET", "/_relay/status", None),
        ("POST", "/api/2.0/mlflow/runs/set-tag", tag),
        ("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}", None),
    ]
    for token in ("", "not-the-job-token-0123456789"):
        for method, path, body in tries:
            status, answer = call(relay, method, path, body, token)
            assert (status, answer["error_code"]) == (401, "UNAUTHENTICATED"), (token, path)
            assert "pending" not in answer and run_id not in json.dumps(answer)  # it tells nothing
    assert "who" not in mlflow_server.client().get_run(run_id).data.tags
    assert call(relay, "POST", "/api/2.0/mlflow/runs/set-tag", tag)[0] == 200
    assert mlflow_server.client().get_run(run_id).data.tags["who"] == "intruder"


def test_only_what_a_job_needs_is_forwarded(
    tmp_path: Path, relays: list[Relay], mlflow_server: MlflowServer
) -> None:
    client = mlflow_server.client()
    mine, other = new_run(mlflow_server.url), new_run(mlflow_server.url)
    exp = client.get_run(other).info.experiment_id
    relay = start_relay(relays, mlflow_server.url, tmp_path / "journal", mine)
    from mlflow import MlflowClient

    via = MlflowClient(relay.url)
    via.get_run(mine)  # as mlflow.start_run does: the relay learns where the job's artifacts go
    art = "/api/2.0/mlflow-artifacts/artifacts"
    refused = [
        ("POST", "/api/2.0/mlflow/users/create", {"username": "eve", "password": "eve-password-1"}),
        ("POST", "/api/2.0/mlflow/users/update-admin", {"username": "eve", "is_admin": True}),
        ("GET", "/api/2.0/mlflow/users/get?username=admin", None),
        ("POST", "/api/2.0/mlflow/experiments/permissions/create", {"experiment_id": exp}),
        ("GET", f"/ajax-api/2.0/mlflow/runs/get?run_id={mine}", None),
        ("GET", "/api/3.0/mlflow/server-info", None),
        ("GET", "/health", None),
        ("GET", "/api/2.0/mlflow/gateway/endpoints/list", None),
        ("POST", "/api/2.0/mlflow/runs/delete", {"run_id": mine}),
        ("POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": exp}),
        ("POST", "/api/2.0/mlflow/registered-models/create", {"name": "stolen"}),
        ("POST", "/api/2.0/mlflow/runs/set-tag", {"run_id": other, "key": "k", "value": "v"}),
        ("POST", "/api/2.0/mlflow/runs/log-batch", {"run_id": other, "params": [{"key": "p", "value": "1"}]}),
        ("PUT", f"{art}/{exp}/{other}/artifacts/planted.txt", b"planted"),
        ("PUT", f"{art}/{exp}/{mine}/artifacts/%2e%2e/%2e%2e/{other}/artifacts/planted.txt", b"planted"),
        ("PUT", f"{art}/{exp}/{other}/artifacts/{mine}/artifacts/planted.txt", b"planted"),
        ("GET", f"{art}?path={exp}/{other}/artifacts", None),
        ("PATCH", "/api/2.0/mlflow/logged-models/m-0123456789abcdef0123456789abcdef", {"status": "READY"}),
    ]
    for method, path, body in refused:
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        status, answer = call(relay, method, path, data)
        assert (status, answer.get("error_code")) == (403, "PERMISSION_DENIED"), (method, path, answer)
    assert client.get_run(other).data.tags.keys() <= {"mlflow.runName", "mlflow.user"}
    assert client.get_run(other).data.params == {} and client.list_artifacts(other) == []
    assert client.get_run(mine).info.lifecycle_stage == "active"
    # what the job does itself still goes through, a run it creates through the relay included
    (tmp_path / "own.txt").write_text("mine")
    via.log_artifact(mine, str(tmp_path / "own.txt"))
    assert [f.path for f in client.list_artifacts(mine)] == ["own.txt"]
    child = via.create_run(exp).info.run_id
    via.log_param(child, "p", "1")
    (tmp_path / "notes.txt").write_text("hello")
    via.log_artifact(child, str(tmp_path / "notes.txt"))
    assert [f.path for f in via.list_artifacts(child)] == ["notes.txt"]
    assert client.get_run(child).data.params == {"p": "1"}


def test_secrets_the_job_logs_are_stored_redacted(
    tmp_path: Path, relays: list[Relay], mlflow_server: MlflowServer
) -> None:
    """A param, a tag, a metric name and a text artifact: the relay replaces the job's secret
    values before anything is sent or journaled. A binary file is left as it is (docs/relay.md)."""
    quoted = 'pa"ss\\word-9731'  # JSON escapes it on the wire: the relay matches the decoded value
    named = "sk-live-8642"  # a metric name admits no quotes
    run_id = new_run(mlflow_server.url)
    secrets = {"HML_SECRET_DB": quoted, "HML_SECRET_KEY": named}
    relay = start_relay(relays, mlflow_server.url, tmp_path / "journal", run_id, redact=secrets)
    from mlflow import MlflowClient

    via = MlflowClient(relay.url)
    via.log_param(run_id, "db", f"postgres://u:{quoted}@db")
    via.set_tag(run_id, "key", named)
    via.log_metric(run_id, f"loss/{named}", 0.5)
    (tmp_path / "config.json").write_text(json.dumps({"password": quoted, "key": named}) + "\n" + quoted * 3)
    via.log_artifact(run_id, str(tmp_path / "config.json"))
    weights = b"\x00\x01\x02" + named.encode() + b"\xff" * 10
    (tmp_path / "weights.bin").write_bytes(weights)
    via.log_artifact(run_id, str(tmp_path / "weights.bin"))

    run = mlflow_server.client().get_run(run_id)
    assert run.data.params["db"] == "postgres://u:***@db"
    assert run.data.tags["key"] == "***"
    assert run.data.metrics == {"loss/REDACTED": 0.5}
    out = tmp_path / "back"
    config = Path(mlflow_server.client().download_artifacts(run_id, "config.json", str(out))).read_text()
    assert quoted not in config and named not in config and config.endswith("*********")
    assert json.loads(config.splitlines()[0])["key"] == "***"
    assert (
        Path(mlflow_server.client().download_artifacts(run_id, "weights.bin", str(out))).read_bytes()
        == weights
    )
