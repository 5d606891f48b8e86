"""One remote session per submit (issue 27), on hosts as users' hosts are.

The host is stock Debian sshd with PAM on and a login user whose ``~/.bashrc`` takes time
(``SLOW_BASHRC``, conda's init stands in), prints to stdout and stderr, exports a variable of
its own and counts each time it runs: every SSH session sshd starts runs it once, so the count
is the number of sessions hml opened, seen from the host. A submit opens one session for its
placement, staging, launch and follower (hmlkit/ssh/session.py) and one to release the GPUs;
``HML_SSH_SESSION=0`` (a session per command, the fallback) opens several. Either way the job
gets the login's variables and nothing of the helper's, and no banner reaches hml's protocol.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hmlkit.errors import BackendError
from hmlkit.ssh.hosts import SshHost
from hmlkit.ssh.pool import HostPool
from hmlkit.ssh.shell import tar_feed, text_files
from tests.runners.helpers import hml, submit_json, wait_finalized, write_job
from tests.runners.test_hosts import home_of, profile_for
from tests.sshbed import SLOW_BASHRC, Login, SshBed, start_bed

BASHRC = (
    SLOW_BASHRC
    + 'echo "Welcome to the cluster"; echo "conda: base activated" >&2\n'
    + "export HML_LOGIN_VAR=from-bashrc\n"
    + "echo login >> ~/.hml-logins\n"
)
"""First in ``~/.bashrc``: before Debian's early return for shells that are not interactive."""

pytestmark = pytest.mark.server  # every test here uses the module's own sshd bed

ENV_JOB = "env | cut -d= -f1 | sed 's/^/NAME /'; echo VALUE=$HML_LOGIN_VAR"
"""The job's environment: its variables' names, and the one the login's ``.bashrc`` exports."""


@pytest.fixture(scope="module")
def slow_bed(tmp_path_factory) -> Iterator[SshBed]:
    started = start_bed(tmp_path_factory.mktemp("slowbed"), 1, login=Login(bashrc=BASHRC))
    try:
        yield started
    finally:
        started.stop()


def logins(bed: SshBed) -> int:
    """Sessions sshd started on the bed so far (each ran the login's ``.bashrc`` once)."""
    counted = home_of(bed) / ".hml-logins"
    return counted.read_text().count("login") if counted.exists() else 0


def submit(tmp_path: Path, bed: SshBed, mlflow_server, session: bool) -> tuple[str, int, set[str]]:
    """Run ``ENV_JOB`` to its end; (its output, sessions it cost the host, its variables' names)."""
    env = {**profile_for(tmp_path, bed, mlflow_server.url), "HML_SSH_SESSION": "1" if session else "0"}
    work = tmp_path / ("session" if session else "per-command")
    job = write_job(work, run=ENV_JOB)
    hml("submit", str(job), "--target", "onprem", "--dry-run", env=env, timeout=120)  # stage the code
    before = logins(bed)
    summary, out = submit_json(str(job), "--target", "onprem", env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    run = wait_finalized(mlflow_server.client(), summary["run_id"])
    assert run.info.status == "FINISHED"
    time.sleep(0.5)  # the supervisor's teardown is over once the run is final; let sshd settle
    cost = logins(bed) - before
    said = out.stdout + out.stderr
    logs = hml("logs", summary["run_id"], env=env)
    assert logs.returncode == 0, logs.stderr
    for text in (said, logs.stdout, logs.stderr):
        assert "Welcome" not in text and "conda: base" not in text, text
    names = {line.split()[1] for line in logs.stdout.splitlines() if line.startswith("NAME ")}
    assert "VALUE=from-bashrc" in logs.stdout, logs.stdout
    return logs.stdout, cost, names


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A warm agent of this test's own (runners/cli/agent.py): a submit's preflight, launch and
    following then run in one process, on one connection per host."""
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("HML_AGENT", raising=False)
    started = hml("agent", "start")
    assert started.returncode == 0, started.stderr
    yield
    hml("agent", "stop")


def test_a_submit_costs_the_host_one_session_and_the_job_gets_the_logins_variables(
    tmp_path, slow_bed, mlflow_server, agent
):
    _, shared, names = submit(tmp_path, slow_bed, mlflow_server, session=True)
    _, separate, names_alone = submit(tmp_path, slow_bed, mlflow_server, session=False)
    # one for preflight, staging, launch and the follower, one for releasing the GPUs at the end
    assert shared <= 2, f"a submit opened {shared} sessions on the host ({separate} per command)"
    assert separate >= 5, f"the per-command path opened {separate} sessions: the count measures nothing"
    # the helper (Python's locale coercion sets LC_CTYPE in its own environment) leaves no trace
    assert names == names_alone, (
        f"only with the helper: {names - names_alone}; only without: {names_alone - names}"
    )
    assert "LC_CTYPE" not in names


def pool_for(tmp_path: Path, bed: SshBed, **host: object) -> tuple[HostPool, SshHost]:
    known = tmp_path / "known_hosts"
    known.write_text(bed.known_hosts_text())
    h = bed.hosts[0]
    spec = SshHost(address=h.address, port=h.port, user=h.user, identity_file=str(h.identity_file), **host)
    return HostPool(known, 10, "onprem", str(h.remote_root)), spec


def test_the_session_carries_text_bytes_stdin_and_exit_status_past_banners(tmp_path, slow_bed):
    pool, host = pool_for(tmp_path, slow_bed)
    before = logins(slow_bed)
    try:
        root = pool.root(host)
        assert pool.exec(host, "echo out; echo err >&2; exit 3") == (3, "out\n", "err\n")
        assert pool.exec(host, "cat | wc -c", stdin=b"\0" * 300_000)[1].strip() == "300000"
        q = f"{root}/session-test"
        files = tar_feed(text_files({"a.txt": "Welcome to the cluster\n"}))
        assert pool.exec(host, f"mkdir -p {q} && tar -xf - -C {q} && cat {q}/a.txt", stdin=files)[1] == (
            "Welcome to the cluster\n"
        )
        assert pool.exec(host, "printf 'a\\000b'", text=False)[1] == b"a\0b"
        stream = pool.stream(host, "echo streamed; echo EXIT 0 >&2")
        deadline = time.monotonic() + 10
        got = b""
        while stream.end is None and time.monotonic() < deadline:
            got += stream.read()
            time.sleep(0.05)
        got += stream.read()
        stream.close()
        assert (got, stream.end) == (b"streamed\n", "EXIT 0")
        assert pool.requests == 6
        # the follower took the session; the pool starts a spare one meanwhile, for what comes next
        deadline = time.monotonic() + 10
        while logins(slow_bed) - before < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # its first reply read: idle in the pool
        assert pool.exec(host, "echo again")[1] == "again\n"
        assert logins(slow_bed) - before == 2 and pool.commands == 2
    finally:
        pool.close()


def test_a_feed_that_fails_half_way_leaves_nothing_and_the_next_command_runs(tmp_path, slow_bed):
    pool, host = pool_for(tmp_path, slow_bed)
    try:
        root = pool.root(host)
        target = f"{root}/cut-short"

        def feed(write):
            write(b"x" * 1000)
            raise BackendError("the store returned other bytes")

        with pytest.raises(BackendError, match="other bytes"):
            pool.exec(host, f"cat > {target}.part && mv {target}.part {target}", stdin=feed)
        rc, out, _ = pool.exec(host, f"test -e {target} && echo there || echo absent")
        assert (rc, out) == (0, "absent\n")
    finally:
        pool.close()


def test_a_host_without_the_python_gets_a_session_per_command(tmp_path, slow_bed):
    pool, host = pool_for(tmp_path, slow_bed, python="/nonexistent/python3")
    before = logins(slow_bed)
    try:
        assert pool.exec(host, "echo one")[1] == "one\n"
        assert pool.exec(host, "echo two")[1] == "two\n"
        stream = pool.stream(host, "echo streamed; echo EXIT 0 >&2")
        deadline = time.monotonic() + 10
        while stream.end is None and time.monotonic() < deadline:
            stream.read()
            time.sleep(0.05)
        stream.close()
        assert stream.end == "EXIT 0"
        # the helper tried once, then each command and the stream a session of its own
        assert logins(slow_bed) - before == 4 and pool.commands == 4
    finally:
        pool.close()
