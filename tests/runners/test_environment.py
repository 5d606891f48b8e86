"""Every job in its own Python environment: on Debian's own ``python3`` (PEP 668) as an ordinary
login user over stock sshd (``ssh_user_bed``), on a host cut off from the index, and locally.

The package index is real and local: a PEP 503 index served by ``python -m http.server`` from
wheels pip downloaded once into ``~/.cache/hybridml`` (tiny pure-Python ``iniconfig`` in two
versions), so uv resolves against it at submit and the hosts' pip installs from it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.awsbed import wait_gone
from tests.conftest import free_port, wait_http
from tests.runners.helpers import hml, status, submit_json, wait_finalized, wait_status, write_job
from tests.sshbed import Login, start_bed

VERSIONS = ("1.1.1", "2.0.0")
SHOW_VERSION = (
    'python -c \'import importlib.metadata as m, sys; print("iniconfig", m.version("iniconfig"), '
    "sys.prefix)'"
)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A simple index of iniconfig's wheels on loopback; its ``/simple`` URL."""
    wheels = Path.home() / ".cache" / "hybridml" / "test-index-wheels"
    if len(list(wheels.glob("iniconfig-*.whl"))) < len(VERSIONS):
        for version in VERSIONS:  # one at a time: pip resolves one set of pins per call
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "-d",
                    str(wheels),
                    f"iniconfig=={version}",
                ],
                check=True,
                timeout=300,
            )
    root = tmp_path_factory.mktemp("index")
    (root / "files").mkdir()
    links = []
    for wheel in sorted(wheels.glob("iniconfig-*.whl")):
        (root / "files" / wheel.name).write_bytes(wheel.read_bytes())
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        links.append(f'<a href="../../files/{wheel.name}#sha256={sha}">{wheel.name}</a>')
    (root / "simple" / "iniconfig").mkdir(parents=True)
    (root / "simple" / "iniconfig" / "index.html").write_text(
        "<html><body>" + "\n".join(links) + "</body></html>"
    )
    (root / "simple" / "index.html").write_text(
        '<html><body><a href="iniconfig/">iniconfig</a></body></html>'
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/simple/", timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}/simple"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _profile(tmp_path: Path, bed, tracking_uri: str | None, **extra) -> dict[str, str]:
    known = tmp_path / "known_hosts"
    known.write_text(bed.known_hosts_text())
    profile = {"targets": {"onprem": bed.target(known, **extra)}}
    if tracking_uri:
        profile["tracking_uri"] = tracking_uri
    path = tmp_path / "hybridml.yaml"
    path.write_text(yaml.safe_dump(profile))
    return {"HML_CONFIG": str(path)}


def _env_job(dir_: Path, pin: str, name: str = "job") -> Path:
    return write_job(dir_, name=name, environment={"packages": [f"iniconfig=={pin}"]}, run=SHOW_VERSION)


def _log(run_id: str) -> str:
    return Path(status(run_id)["log"]).read_text()


def _reports(log: str) -> list[dict]:
    return [
        json.loads(line.split("hml: environment ", 1)[1])
        for line in log.splitlines()
        if "hml: environment {" in line
    ]


def test_readme_job_runs_on_a_pep668_host_as_a_login_user(tmp_path, ssh_user_bed, index):
    """README's job file (``setup: pip install -r requirements.txt``, ``run: python train.py``)
    on Debian's python3, where ``python`` does not exist and PEP 668 refuses ``pip install``."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "requirements.txt").write_text(f"--index-url {index}\niniconfig==2.0.0\n")
    (work / "train.py").write_text(
        "import iniconfig, sys\nprint('trained in', sys.prefix, iniconfig.__file__)\n"
    )
    job = write_job(work, setup="pip install -r requirements.txt", run="python train.py")
    env = _profile(tmp_path, ssh_user_bed, None)
    out = hml("submit", str(job), "--target", "onprem", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "externally-managed-environment" not in out.stdout
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("trained in"))
    prefix, where = line.split()[2:4]
    assert prefix.endswith("/venv") and "/runs/" in prefix and where.startswith(prefix)  # the job's own venv
    assert str(ssh_user_bed.hosts[0].remote_root) in prefix


def test_a_locked_environment_is_built_once_per_host_and_recorded(
    tmp_path, ssh_user_bed, index, mlflow_server
):
    env = {**_profile(tmp_path, ssh_user_bed, mlflow_server.url), "UV_DEFAULT_INDEX": index}
    job = _env_job(tmp_path / "w", "1.1.1")
    first, out = submit_json(str(job), "--target", "onprem", env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "iniconfig 1.1.1 " in _log(first["run_id"])
    second, out = submit_json(str(job), "--target", "onprem", env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    cold, warm = _reports(_log(first["run_id"]))[0], _reports(_log(second["run_id"]))[0]
    assert "building it on this host" in _log(first["run_id"]) and cold["built_s"] > 0
    assert "building it" not in _log(second["run_id"]) and warm["built_s"] == 0  # installs nothing
    assert warm["env_s"] < 0.2, warm
    assert cold["digest"] == warm["digest"] and warm["python"].startswith("3.")
    print(f"environment time per attempt: cold {cold['env_s']} s, warm {warm['env_s']} s")
    client = mlflow_server.client()
    run = wait_finalized(client, second["run_id"])
    assert run.data.tags["hml.env.digest"] == warm["digest"]
    assert run.data.tags["hml.env.python"] == warm["python"]
    lock = Path(client.download_artifacts(second["run_id"], "hml/env.lock", str(tmp_path / "a"))).read_text()
    assert "iniconfig==1.1.1" in lock and "--hash=sha256:" in lock and f"--index-url {index}" in lock
    host_env = ssh_user_bed.hosts[0].remote_root / "envs" / warm["digest"]
    assert (host_env / "requirements.lock").read_text() == lock
    elsewhere = {**env, "HML_HOME": str(tmp_path / "another-machine")}  # no record there: MLflow's
    for run, where in ((second["run_id"][:8], env), (second["run_id"], elsewhere)):
        shown = json.loads(hml("env", "show", run, "-o", "json", env=where).stdout)
        assert (shown["digest"], shown["lock"], shown["seen_python"]) == (
            warm["digest"],
            lock,
            warm["python"],
        )
    # the same environment again, from a job file that has none: the old run's lock, no resolution
    bare = write_job(tmp_path / "bare", run=SHOW_VERSION)
    again, out = submit_json(str(bare), "--target", "onprem", "--env-of", second["run_id"][:8], env=env)
    assert out.returncode == 0, out.stderr
    assert _reports(_log(again["run_id"]))[0] == {
        **warm,
        "env_s": _reports(_log(again["run_id"]))[0]["env_s"],
    }
    assert wait_finalized(client, again["run_id"]).data.tags["hml.env.digest"] == warm["digest"]


def test_conflicting_pins_on_one_host_and_one_builder_per_lock(tmp_path, ssh_user_bed, index):
    """Three jobs at once on one host: two share a lock (one builds, the other waits and
    installs nothing), the third pins another version; each sees exactly its pin."""
    env = {**_profile(tmp_path, ssh_user_bed, None), "UV_DEFAULT_INDEX": index}
    jobs = [
        (_env_job(tmp_path / f"w{i}", pin, f"job{i}"), pin)
        for i, pin in enumerate(["2.0.0", "2.0.0", "1.1.1"])
    ]
    # a fresh remote_root: nothing is built there yet
    root = ssh_user_bed.hosts[0].remote_root.parent / f"fresh-{time.time_ns()}"
    env["HML_CONFIG"] = str(tmp_path / "fresh.yaml")
    known = tmp_path / "known_hosts"
    target = ssh_user_bed.target(known)
    for host in target["hosts"]:
        host["remote_root"] = str(root)
    Path(env["HML_CONFIG"]).write_text(yaml.safe_dump({"targets": {"onprem": target}}))
    started = []
    for job, pin in jobs:
        run, out = submit_json(str(job), "--target", "onprem", "--detach", env=env, timeout=600)
        assert out.returncode == 0, out.stderr
        started.append((run["run_id"], pin))
    for run_id, pin in started:
        assert wait_status(run_id, {"FINISHED", "FAILED"}, timeout=600, env=env)["status"] == "FINISHED", (
            _log(run_id)
        )
        assert f"iniconfig {pin} " in _log(run_id)
    shared = [_log(r) for r, pin in started if pin == "2.0.0"]
    assert sum("building it on this host" in log for log in shared) == 1, shared


def test_a_requirement_no_index_has_fails_at_submit_with_exit_2_and_no_run(tmp_path, index, hml_home):
    job = _env_job(tmp_path / "w", "99.0")
    out = hml("submit", str(job), env={"UV_DEFAULT_INDEX": index})
    assert out.returncode == 2, out.stderr
    assert "environment.packages: cannot be resolved" in out.stderr and "iniconfig==99.0" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (hml_home / "runs").exists() or not list((hml_home / "runs").iterdir())


def test_local_job_sees_its_lock_over_the_runners_own_packages(tmp_path, index):
    """The runner's venv has a newer iniconfig (pytest's); the job's lock wins."""
    job = _env_job(tmp_path / "w", "1.1.1")
    run, out = submit_json(str(job), env={"UV_DEFAULT_INDEX": index}, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "iniconfig 1.1.1 " in _log(run["run_id"])


@pytest.mark.server
def test_a_host_without_the_index_gets_the_wheels_over_ssh(tmp_path, index):
    """A host in its own network namespace reaches nothing but SSH from here: the runner sends
    the lock's wheels (``env_via: auto`` after the host's probe fails) and the job runs."""
    bed = start_bed(tmp_path / "bed", 1, own_network=True, login=Login())
    try:
        env = {**_profile(tmp_path, bed, None), "UV_DEFAULT_INDEX": index}
        run, out = submit_json(
            str(_env_job(tmp_path / "w", "2.0.0")), "--target", "onprem", env=env, timeout=600
        )
        assert out.returncode == 0, out.stderr + _log(run["run_id"])
        assert "iniconfig 2.0.0 " in _log(run["run_id"])
        wheels = bed.hosts[0].remote_root / "envs" / "wheels"
        assert [p.name for p in wheels.glob("*.whl")] == ["iniconfig-2.0.0-py3-none-any.whl"]
    finally:
        bed.stop()


def test_slurm_builds_the_lock_once_on_the_shared_file_system(tmp_path, ssh_bed, slurm_bed, index):
    """Two nodes of one Slurm job start at once on the cluster's shared ``remote_root``: one
    builds the lock, the other waits for it and installs nothing; both run in it."""
    known = tmp_path / "known_hosts"
    known.write_text(ssh_bed.known_hosts_text())
    target = slurm_bed.target(ssh_bed.hosts[0], known)
    target["remote_root"] = str(slurm_bed.root / f"shared-{time.time_ns()}")  # nothing built there yet
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(yaml.safe_dump({"targets": {"cluster": target}}))
    env = {"HML_CONFIG": str(profile), "UV_DEFAULT_INDEX": index}
    job = write_job(
        tmp_path / "w", environment={"packages": ["iniconfig==1.1.1"]}, run=SHOW_VERSION, num_nodes=2
    )
    run, out = submit_json(str(job), "--target", "cluster", env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    log = _log(run["run_id"])
    assert log.count("building it on this host") == 1, log
    reports = _reports(log)
    assert len(reports) == 2 and reports[0]["digest"] == reports[1]["digest"], log
    assert [r["built_s"] > 0 for r in reports].count(True) == 1  # the other waited, then used it
    assert log.count("iniconfig 1.1.1 ") == 2


def test_the_same_lock_gives_the_same_freeze_on_local_ssh_slurm_aws_and_kubernetes(
    tmp_path, index, ssh_user_bed, ssh_bed, slurm_bed, aws_bed, k8s_bed, mlflow_server
):
    """One lock, five targets: the laptop (over the runner's own venv, which has another
    iniconfig), a PEP 668 host as a login user, a Slurm cluster, an EC2 instance (moto), and a
    Kubernetes pod (the training image's Python plus the lock, built in the pod)."""
    known = tmp_path / "known_hosts"
    known.write_text(ssh_user_bed.known_hosts_text() + ssh_bed.known_hosts_text())
    targets = {
        "local": {"kind": "local"},
        "onprem": ssh_user_bed.target(known),
        "cluster": slurm_bed.target(ssh_bed.hosts[0], known),
        "cloud": aws_bed.target(),
        "kube": k8s_bed.target(),
    }
    profile = tmp_path / "hybridml.yaml"
    profile.write_text(yaml.safe_dump({"tracking_uri": mlflow_server.url, "targets": targets}))
    env = {"HML_CONFIG": str(profile), "UV_DEFAULT_INDEX": index}
    freeze = "pip freeze | grep -i '^iniconfig=='"
    job = write_job(tmp_path / "w", environment={"packages": ["iniconfig==1.1.1"]}, run=freeze)
    seen, first = {}, None
    for target in targets:
        again = ["--env-of", first] if first else []
        run, out = submit_json(str(job), "--target", target, *again, env=env, timeout=600)
        assert out.returncode == 0, f"{target}: {out.stderr}"
        first = first or run["run_id"]
        seen[target] = [ln for ln in _log(run["run_id"]).splitlines() if ln.lower().startswith("iniconfig==")]
        digest = wait_finalized(mlflow_server.client(), run["run_id"]).data.tags["hml.env.digest"]
        seen[target].append(digest)
    assert len({tuple(v) for v in seen.values()}) == 1 and seen["local"][0] == "iniconfig==1.1.1", seen
    assert wait_gone(aws_bed) == []
