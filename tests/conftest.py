"""Fixtures shared by every test package: real servers on free ports, isolated state."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""A test's ``mlflow server``: without MLflow 3's job runner (eight huey consumers, ~1.5 GB per
server) that tracking never uses, as hml's own local server runs."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@dataclass
class MlflowServer:
    """A real ``mlflow server`` process with a SQLite store and proxied artifacts."""

    root: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=SERVER_ENV,
        )
        wait_http(f"{self.url}/health", proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=30)

    def client(self):  # noqa: ANN201 - mlflow is imported lazily
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), free_port()).start()
    yield server
    server.stop()


@contextmanager
def moto_server(log: Path | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """A moto server process on a free loopback port (``env`` added to its environment, its
    output to ``log``), up and answering; its URL. Stopped on exit."""
    port = free_port()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", timeout=30, proc=proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if log:
            out.close()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on a free loopback port, as its own process, for the whole session."""
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """A boto3 S3 client talking to the moto server."""
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    return boto3.client("s3")


@pytest.fixture(autouse=True)
def hml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets its own runner state; no profile leaks in from the environment.

    The embedded default's local tracking server is off unless a test turns it on
    (``HML_LOCAL_SERVER=1``): hundreds of servers would not fit the machine. One a test
    started under its home is stopped after it."""
    from runners.tracking import local_server

    home = tmp_path / "hml-home"
    monkeypatch.setenv("HML_HOME", str(home))
    monkeypatch.setenv("HML_LOCAL_SERVER", "0")
    monkeypatch.delenv("HML_CONFIG", raising=False)
    yield home
    local_server.stop()


from tests.awsbed import aws_bed  # noqa: E402,F401  (a moto server whose instances boot sshd hosts)
from tests.slurmbed import slurm_bed  # noqa: E402,F401  (a real Slurm cluster, session-wide)
from tests.sshbed import ssh_bed  # noqa: E402,F401  (real sshd hosts, session-wide)
