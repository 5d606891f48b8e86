"""The embedded default's local tracking server answers its owner only, and reads and writes
nothing outside its store and artifact root (runners/tracking/local_app.py, docs/security.md).

Before: another account on the machine found the port in ``/proc/net/tcp`` and read, rewrote
and deleted the victim's runs, and an experiment whose artifact location pointed into a
directory it controlled (a symlink there to ``~/.bashrc``) let the server, running with the
victim's rights, read and write any of the victim's files."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml

from runners.tracking import local_server
from runners.tracking.rest import Rest, RestError
from tests.runners.helpers import hml
from tests.security.users import User

ON = {"HML_LOCAL_SERVER": "1"}
JOB = "import mlflow; mlflow.start_run(); mlflow.log_metric('m', 7); mlflow.end_run()"

ATTACK = r"""
import json, os, sys, urllib.error, urllib.request

victim_uid, run_id, experiment_id, evil, bashrc = int(sys.argv[1]), *sys.argv[2:]
os.makedirs(evil)
os.chmod(evil, 0o777)  # the victim's server may go in: it is the attacker's door
os.symlink(bashrc, os.path.join(evil, "bashrc"))

ports = []  # the state file is private; the kernel's socket table is not
with open("/proc/net/tcp") as fh:
    for row in (line.split() for line in fh.readlines()[1:]):
        if row[3] == "0A" and int(row[7]) == victim_uid and row[1].startswith("0100007F:"):
            ports.append(int(row[1].split(":")[1], 16))


def call(port, method, path, body=None, headers=None, raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return str(exc)


tries = {}
for port in ports:
    tries[port] = {
        "health": call(port, "GET", "/health"),
        "search runs": call(port, "POST", "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]}),
        "read run": call(port, "GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}"),
        "set tag": call(
            port, "POST", "/api/2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": "pwned", "value": "1"}
        ),
        "delete run": call(port, "POST", "/api/2.0/mlflow/runs/delete", {"run_id": run_id}),
        "experiment into my dir": call(
            port, "POST", "/api/2.0/mlflow/experiments/create",
            {"name": "evil", "artifact_location": "file://" + evil},
        ),
        "run there": call(port, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": "1"}),
        "upload through it": call(
            port, "POST", f"/ajax-api/2.0/mlflow/upload-artifact?run_uuid={run_id}&path=bashrc", raw=b"pwned"
        ),
        "download": call(port, "GET", f"/get-artifact?run_uuid={run_id}&path=hml/job.yaml"),
        "guessed token": call(
            port, "GET", "/api/2.0/mlflow/experiments/search?max_results=5",
            headers={"Authorization": "Bearer guess", "Cookie": f"hml-{port}=guess"},
        ),
        "login with a guess": call(port, "GET", "/hml-login?token=guess"),
        "ui": call(port, "GET", "/"),
    }
print(json.dumps({"ports": ports, "tries": tries}))
"""


def _give(user: User, path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.chown(p, user.uid, user.gid)


def _get(url: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_another_user_cannot_reach_the_local_tracking_server(victim: User, attacker: User) -> None:
    ui = victim.hml("ui", "-o", "json", env=ON, timeout=300)
    assert ui.returncode == 0, ui.stderr
    shown = json.loads(ui.stdout)
    url, browser = shown["url"], shown["browser_url"]
    state_dir = victim.work / "hml-home"
    token = (state_dir / local_server.TOKEN).read_text().strip()
    assert (state_dir / local_server.TOKEN).stat().st_mode & 0o777 == 0o600
    assert browser == f"{url}/hml-login?token={token}"

    work = victim.work / "w"
    work.mkdir()
    (work / "job.yaml").write_text(
        yaml.safe_dump({"name": "tiny", "experiment": "mine", "run": f'{sys.executable} -c "{JOB}"'})
    )
    _give(victim, work)
    out = victim.hml("submit", "job.yaml", "-o", "json", cwd=work, env=ON, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    run = json.loads(out.stdout)
    run_id, experiment_id = run["run_id"], run["experiment_id"]
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    assert f"hml: in MLflow: {url}/{page}" in out.stderr, "the closing link is not the address hml ui serves"
    log = Path(run["log"]).read_text()
    assert "View run" not in log, f"the job's MLflow printed a link to its relay's port: {log}"

    bashrc = victim.home / ".bashrc"
    if not bashrc.exists():
        bashrc.write_text("# the victim's shell\n")
        os.chown(bashrc, victim.uid, victim.gid)
    before = bashrc.read_bytes()
    evil = Path("/tmp") / f"hml-evil-{uuid.uuid4().hex[:8]}"
    try:
        cat = attacker.run(["cat", str(state_dir / local_server.TOKEN), str(state_dir / local_server.STATE)])
        assert cat.returncode != 0 and token not in cat.stdout
        attack = attacker.python(ATTACK, str(victim.uid), run_id, experiment_id, str(evil), str(bashrc))
        assert attack.returncode == 0, attack.stderr
        found = json.loads(attack.stdout)
        port = urllib.parse.urlsplit(url).port
        assert port in found["ports"], f"the attacker did not find the server: {found}"
        tried = found["tries"][str(port)]
        assert tried == dict.fromkeys(tried, 401), f"the server answered another user: {tried}"
        assert bashrc.read_bytes() == before
    finally:
        shutil.rmtree(evil, ignore_errors=True)

    # the owner's address works: the browser's login sets its cookie, the UI and API answer it
    login = _get(url, urllib.parse.urlsplit(browser).path + "?" + urllib.parse.urlsplit(browser).query)
    assert login.status == 303 and login.getheader("Location") == "/"
    cookie = login.getheader("Set-Cookie") or ""
    assert cookie.startswith(f"hml-{port}={token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert _get(url, "/", {"Cookie": cookie.split(";")[0]}).status == 200
    api = Rest(url, {"MLFLOW_TRACKING_TOKEN": token})
    got = api.call("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    assert got["info"]["status"] == "FINISHED" and got["info"]["lifecycle_stage"] == "active"
    assert {m["key"]: m["value"] for m in got["data"]["metrics"]}["m"] == 7
    assert "pwned" not in {t["key"] for t in got["data"].get("tags", [])}
    names = {
        e["name"]
        for e in api.call("GET", "/api/2.0/mlflow/experiments/search?max_results=100")["experiments"]
    }
    assert "evil" not in names and "mine" in names


def test_artifact_locations_outside_the_root_are_refused_even_with_the_token(
    tmp_path: Path, hml_home: Path
) -> None:
    """The owner's token opens the API, not the owner's files: the server keeps to its root
    however an experiment came to point elsewhere."""
    from mlflow.tracking import MlflowClient

    out = hml("ui", "-o", "json", env=ON)
    assert out.returncode == 0, out.stderr
    api = Rest(json.loads(out.stdout)["url"], local_server.credentials())
    root = hml_home / "artifacts"
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "bashrc"
    precious.write_text("mine\n")
    (root / "door").symlink_to(outside)  # a link inside the root that leads out
    for i, location in enumerate(
        [
            outside.as_uri(),
            str(outside),
            (root / "door" / "x").as_uri(),
            f"{root.as_uri()}/../x",
            "s3://bucket/x",
        ]
    ):
        with pytest.raises(RestError) as refused:
            api.experiment_id(f"out-{i}", location)
        assert refused.value.code == "INVALID_PARAMETER_VALUE", location
        assert "outside this server's artifact root" in str(refused.value), location

    inside = api.experiment_id("inside", local_server.artifact_root())  # as hml's own runs do
    ok_run, ok_artifacts = api.create_run(inside, "ok", {})
    api.call("POST", f"/ajax-api/2.0/mlflow/upload-artifact?run_uuid={ok_run}&path=note", raw=b"fine")
    assert (Path(urllib.parse.urlparse(ok_artifacts).path) / "note").read_bytes() == b"fine"

    # an experiment made in the store directly, with no server in the way, pointing outside
    client = MlflowClient(local_server.store_uri())
    direct = client.create_experiment("direct", artifact_location=outside.as_uri())
    run_id = client.create_run(direct).info.run_id
    (outside / run_id / "artifacts").mkdir(parents=True)
    (outside / run_id / "artifacts" / "x").symlink_to(precious)
    with pytest.raises(RestError) as refused:
        api.create_run(direct, "there", {})
    assert refused.value.code == "INVALID_PARAMETER_VALUE" and "creates no run there" in str(refused.value)
    for method, path, body in [
        ("GET", f"/api/2.0/mlflow/artifacts/list?run_id={run_id}", None),
        ("GET", f"/get-artifact?run_uuid={run_id}&path=x", None),
        ("POST", f"/ajax-api/2.0/mlflow/upload-artifact?run_uuid={run_id}&path=x", b"pwned"),
    ]:
        with pytest.raises(RestError) as refused:
            api.call(method, path, raw=body)
        assert refused.value.code == "INVALID_PARAMETER_VALUE" and "artifact root" in str(refused.value), path
    assert precious.read_text() == "mine\n"
