"""Hosts as they are (issue 23): any login shell, banners from its start-up files, the Python a
distribution ships, and a preflight that names what a host lacks.

Every host here is stock Debian sshd with PAM on and an ordinary login user made for the test
(``tests.sshbed.Login``), whose start-up files print to stdout and stderr. Each job runs to
FINISHED with its own metric and the node's system metrics (the relay and the sampler run
under the host's interpreter), or is refused at preflight with the host and the fix.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hmlkit.ssh.preflight import MIN_PYTHON
from tests.runners.helpers import assert_system_metrics, hml, status, submit_json, wait_finalized, write_job
from tests.sshbed import Login, SshBed, start_bed

PYENV = Path.home() / ".pyenv" / "versions"


def interpreters() -> dict[tuple[int, ...], str]:
    """Every CPython this machine has (pyenv's versions, 2.7 among them, and the distribution's),
    by version."""
    found = {}
    for python in [*sorted(PYENV.glob("*/bin/python")), Path("/usr/bin/python3")]:
        out = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode == 0:
            found[tuple(int(x) for x in out.stdout.split("."))] = str(python)
    return found


def oldest() -> str:
    """The oldest interpreter hml supports on hosts; a machine without it fails this test with the fix."""
    usable = {v: p for v, p in interpreters().items() if v[:2] >= MIN_PYTHON}
    version = min(usable)
    assert version[:2] == MIN_PYTHON, (
        f"no Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} here to test hosts with (oldest: {version}); "
        f"install one: pyenv install {MIN_PYTHON[0]}.{MIN_PYTHON[1]}"
    )
    return usable[version]


def newest() -> str:
    return interpreters()[max(interpreters())]


BANNERS = {
    "/bin/bash": (".bashrc", 'echo "Welcome to the cluster (bash)"; echo "module: loaded cuda/12" >&2\n'),
    "/usr/bin/zsh": (".zshenv", 'echo "Welcome (zsh)"; echo "zsh: module loaded" >&2; printf "no newline"\n'),
    "/usr/bin/tcsh": (".cshrc", 'echo "Welcome (tcsh)"\nsh -c \'echo "tcsh: module loaded" >&2\'\n'),
    "/usr/bin/csh": (".cshrc", 'echo "Welcome (csh)"\nsh -c \'echo "csh: module loaded" >&2\'\n'),
}
"""What each shell reads for a command over SSH, and a banner there to stdout and stderr (dash
reads no file for ``sh -c``)."""


def home_of(bed: SshBed) -> Path:
    return Path(pwd.getpwnam(bed.hosts[0].user).pw_dir)


def as_login(bed: SshBed, path: Path, text: str, mode: int = 0o644) -> Path:
    """A file the bed's login user owns (its rc files, a script of its own)."""
    entry = pwd.getpwnam(bed.hosts[0].user)
    path.write_text(text)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)
    return path


@pytest.fixture
def bed(request, tmp_path) -> Iterator[SshBed]:
    """One stock host whose login shell is ``request.param``, its start-up files printing banners."""
    shell = request.param
    started = start_bed(tmp_path / "bed", 1, login=Login(shell=shell))
    try:
        if shell in BANNERS:
            name, banner = BANNERS[shell]
            rc = home_of(started) / name
            old = rc.read_text() if rc.exists() else ""
            as_login(started, rc, banner + old)  # first: Debian's .bashrc returns early when not interactive
        yield started
    finally:
        started.stop()


def profile_for(tmp_path: Path, bed: SshBed, tracking_uri: str, **host: object) -> dict[str, str]:
    known = tmp_path / "known_hosts"
    known.write_text(bed.known_hosts_text())
    # the relay refuses a loopback tracking server another OS user serves (the test's server,
    # to the login user made for the bed): its upstream is the runner's forward instead
    target = bed.target(known, tracking_via="runner")
    target["hosts"] = [{**h, **host} for h in target["hosts"]]
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(yaml.safe_dump({"tracking_uri": tracking_uri, "targets": {"onprem": target}}))
    return {"HML_CONFIG": str(profile)}


TRAIN = """import json, os, time, urllib.request
uri, run = os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_RUN_ID"]
headers = {"Content-Type": "application/json"}
if os.environ.get("MLFLOW_TRACKING_TOKEN"):
    headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]
for step in range(3):
    now = int(time.time() * 1000)
    body = {"run_id": run, "key": "loss", "value": 1.0 / (step + 1), "timestamp": now, "step": step}
    req = urllib.request.Request(uri + "/api/2.0/mlflow/runs/log-metric", json.dumps(body).encode(), headers)
    urllib.request.urlopen(req, timeout=30).read()
    time.sleep(1)
print("trained with", os.environ["HML_PYTHON"])
"""
"""Standard library only, logging through the job's relay with MLflow's REST API: any ``python3``."""


CASES = [
    ("/bin/bash", "oldest"),
    ("/bin/dash", "python3"),
    ("/usr/bin/tcsh", "newest"),
    ("/usr/bin/zsh", "python3"),
    ("/usr/bin/csh", "oldest"),
]


@pytest.mark.parametrize(
    ("bed", "python"), CASES, indirect=["bed"], ids=[c[0].rsplit("/", 1)[1] for c in CASES]
)
def test_a_job_finishes_with_its_metrics_whatever_the_login_shell_and_python(
    tmp_path, bed, python, mlflow_server
):
    interpreter = {"oldest": oldest, "newest": newest}.get(python, lambda: python)()
    env = profile_for(tmp_path, bed, mlflow_server.url, python=interpreter)
    work = tmp_path / "w"
    work.mkdir()
    (work / "train.py").write_text(TRAIN)
    job = write_job(work, run='"$HML_PYTHON" train.py', envs={"TRACKING_SYSTEM_METRICS_S": "1"})
    summary, out = submit_json(str(job), "--target", "onprem", env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    said = out.stdout + out.stderr
    assert "Welcome" not in said and "module loaded" not in said and "no newline" not in said
    assert f"trained with {interpreter}" in hml("logs", summary["run_id"], env=env).stdout
    client = mlflow_server.client()
    run = wait_finalized(client, summary["run_id"])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [0, 1, 2]
    assert_system_metrics(client, run.info.run_id)


@pytest.fixture(scope="module")
def plain_bed(tmp_path_factory) -> Iterator[SshBed]:
    """One stock bash host for the preflight's refusals (nothing is started on it)."""
    started = start_bed(tmp_path_factory.mktemp("plainbed"), 1, login=Login())
    try:
        yield started
    finally:
        started.stop()


def refused(tmp_path: Path, bed: SshBed, mlflow_server, resources: dict | None = None, **host: object) -> str:
    env = profile_for(tmp_path, bed, mlflow_server.url, **host)
    job = write_job(tmp_path / "w", run="true", resources=resources or {})
    out = hml("submit", str(job), "--target", "onprem", "--dry-run", env=env, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert bed.hosts[0].address in out.stderr, out.stderr
    return out.stderr


def test_preflight_refuses_a_host_without_the_python(tmp_path, plain_bed, mlflow_server):
    said = refused(tmp_path, plain_bed, mlflow_server, python="/opt/nowhere/python3")
    assert "/opt/nowhere/python3 is not on the login's PATH" in said and "python:" in said


def test_preflight_refuses_too_old_a_python_and_says_how_to_point_at_another(
    tmp_path, plain_bed, mlflow_server
):
    too_old = next((p for v, p in sorted(interpreters().items()) if v[:2] < MIN_PYTHON), None)
    if too_old is None:  # no interpreter older than hml supports: a script that says it is one
        too_old = str(
            as_login(plain_bed, home_of(plain_bed) / "old-python", "#!/bin/sh\necho 3.5.10\n", 0o755)
        )
    said = refused(tmp_path, plain_bed, mlflow_server, python=too_old)
    assert "hml's helpers need 3.6+" in said and "set python: /path/to/python3" in said


def test_preflight_refuses_a_remote_root_the_login_cannot_write(tmp_path, plain_bed, mlflow_server):
    said = refused(tmp_path, plain_bed, mlflow_server, remote_root="/root/hml-not-yours")
    assert "remote_root /root/hml-not-yours is not writable" in said and "set remote_root" in said


def test_preflight_refuses_a_noexec_remote_root(tmp_path, plain_bed, mlflow_server):
    mount = home_of(plain_bed) / "noexec"  # where the login user can reach it
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noexec,size=4m,mode=1777", "tmpfs", str(mount)], check=True
    )
    try:
        said = refused(tmp_path, plain_bed, mlflow_server, remote_root=str(mount / "hml"))
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)
        mount.rmdir()
    assert "noexec" in said and "set remote_root" in said


def test_preflight_refuses_gpus_on_a_host_without_nvidia_smi(tmp_path, plain_bed, mlflow_server):
    said = refused(tmp_path, plain_bed, mlflow_server, resources={"gpus": 1})
    assert "no nvidia-smi" in said and "gpus: N" in said


def test_a_helper_that_dies_on_the_host_is_the_runs_reason_within_seconds(tmp_path, plain_bed, mlflow_server):
    """An interpreter that passes the preflight, then fails the output follower (as a helper the
    host's Python cannot run would): the run fails with what it said, not after a silent wait."""
    broken = as_login(
        plain_bed,
        home_of(plain_bed) / "broken-python",
        '#!/bin/sh\ncase "$*" in *follow.py*) echo "ImportError: no follower here" >&2; exit 3;; esac\n'
        'exec python3 "$@"\n',
        0o755,
    )
    env = profile_for(tmp_path, plain_bed, mlflow_server.url, python=str(broken))
    job = write_job(tmp_path / "w", run="sleep 60")
    got, _ = submit_json(str(job), "--target", "onprem", "--detach", env=env)
    started = time.monotonic()
    while (found := status(got["run_id"], env=env))["status"] not in ("FAILED", "LOST"):
        assert time.monotonic() - started < 20, f"still {found['status']} after 20 s: {found}"
        time.sleep(0.3)
    assert found["status"] == "FAILED", found
    assert "ImportError: no follower here" in found["reason"], found
