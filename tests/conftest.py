"""Fixtures shared by every test package: real servers on free ports, isolated state.

Run in parallel by ``python3 dev.py test`` (pytest-xdist, ``--dist loadgroup``): each worker has
its own session fixtures (MLflow server, moto, SSH bed), its own runtime dir and OS users. The
hooks below mark what needs a server (``server``: left out of ``dev.py test --fast``) and keep
the tests of one expensive or address-bound bed on one worker, all from the fixtures a test
uses, so nobody has to remember to mark a test.
"""

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

from tests.tier import refuse_in_fast_tier

BIN = Path(sys.executable).parent
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""A test's ``mlflow server``: without MLflow 3's job runner (eight huey consumers, ~1.5 GB per
server) that tracking never uses, as hml's own local server runs."""

BEDS = ("slurm_bed", "aws_bed", "k8s_bed")
"""Session beds built once per run: every test using one runs on the same worker (one Slurm
cluster; one AWS stand-in with its moto server and booted sshd hosts; one Kubernetes control plane)."""
SERVERS = {
    "mlflow_server",
    "moto_endpoint",
    "s3",
    "ssh_bed",
    "ssh_user_bed",
    "ssh_slow_bed",
    *BEDS,
    "victim",
    "attacker",
}
"""Fixtures that start a server, a bed or OS users: a test using one is marked ``server``."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "server: starts a server, a test bed or OS users; set from the fixtures a test uses "
        "(mark by hand only a test that starts one itself); left out of dev.py test --fast",
    )


@pytest.hookimpl(tryfirst=True)  # before -m deselects and xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``server`` for a test that uses a server fixture; one ``xdist_group`` for the tests that
    share a bed of ``BEDS`` or a module-scoped fixture (a module's expensive setup, made once),
    merged where a test shares both, so that a bed is never built on two workers."""
    shared = {item.path for item in items if _uses_module_fixture(item)}
    links: dict[str, str] = {}

    def root(key: str) -> str:
        while key in links:
            key = links[key]
        return key

    keys: dict[pytest.Item, list[str]] = {}
    for item in items:
        if SERVERS & set(item.fixturenames):
            item.add_marker("server")
        keys[item] = [b for b in BEDS if b in item.fixturenames]
        if item.path in shared:
            keys[item].append(item.nodeid.split("::")[0])
        for key in keys[item][1:]:  # the first key, a bed where one is used, names the group
            if root(key) != root(keys[item][0]):
                links[root(key)] = root(keys[item][0])
    for item, its in keys.items():
        if its:
            item.add_marker(pytest.mark.xdist_group(root(its[0])))
            if getattr(config.option, "loadgroup", False):  # an xdist worker: the group in the nodeid
                _group_nodeid(item, root(its[0]))


def _group_nodeid(item: pytest.Item, group: str) -> None:
    """``nodeid@group``, which xdist's loadgroup scheduler reads. xdist 3.8 writes it to
    ``item._nodeid``, which pytest 9.2 no longer reads (``nodeid`` is ``str(item._id)``), so
    without this every test would be scheduled alone and a bed built on every worker."""
    from _pytest.nodeid import coerce_node_id

    item._id = coerce_node_id(f"{item.nodeid}@{group}")  # type: ignore[attr-defined]


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info else []
    return any(d[-1].scope == "module" for d in defs if d)


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
        refuse_in_fast_tier("an MLflow server")
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
    refuse_in_fast_tier("a moto server")
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


@pytest.fixture(scope="session", autouse=True)
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This worker's ``XDG_RUNTIME_DIR``, set for the whole session (module and session fixtures
    run ``hml`` too): the warm agent that the tests' ``hml`` commands start lives here, never in
    the developer's own; stopped at the end of the session."""
    from runners.cli import agent_client

    path = tmp_path_factory.mktemp("xdg-runtime")
    path.chmod(0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(path))
        yield path
        agent_client.stop()


@pytest.fixture(autouse=True)
def hml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets its own runner state; no profile leaks in from the environment, and
    neither the developer's local tracking server nor their warm agent (``runtime_dir``) is reached.

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
from tests.k8sbed import k8s_bed  # noqa: E402,F401  (a real Kubernetes control plane, session-wide)
from tests.slurmbed import slurm_bed  # noqa: E402,F401  (a real Slurm cluster, session-wide)
from tests.sshbed import ssh_bed, ssh_slow_bed, ssh_user_bed  # noqa: E402,F401  (real sshd hosts, session-wide)
