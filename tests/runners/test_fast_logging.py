"""The job's fast logging path (the buffered client of hmlkit/node/plugin/hml_mlflow_buffer.py,
into a relay that writes metrics behind) and what a running job shows of its node, run by the
real ``hml`` against a real MLflow server on the local target.

The relay's guarantees under an outage are the outage tests' (test_local.py, test_relay.py,
test_tracking_via_runner.py), which run with this path on; here: what it costs when the job
process itself is SIGKILLed, the one loss it can add, and that the loss is bounded.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MlflowServer
from tests.hmlkit.test_sysmetrics import fake_nvidia_smi
from tests.runners.helpers import hml, status, submit_json, wait_finalized, wait_status, write_job
from tests.runners.test_local import local_profile

pytestmark = pytest.mark.server  # a job logging to an MLflow server

LOSS_BOUND_S = 1.0
"""docs/relay.md: a SIGKILL loses at most the metrics of the last 50 ms (the client's buffer,
hml_mlflow_buffer.FLUSH_S) and of the batch the relay was answering (it journals first: about a
millisecond). The rest of the second covers a sender thread starved on this loaded machine."""

KILLED_LOOP = """
import mlflow, os, time
print("store", type(mlflow.tracking._tracking_service.utils._get_store()).__name__, flush=True)
out = os.open("steps.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
with open("pid.tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace("pid.tmp", "pid")
step = 0
while True:
    mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    os.write(out, b"%d %f\\n" % (step, time.time()))  # in the kernel once written: a SIGKILL keeps it
    step += 1
    time.sleep(0.01)
"""


def test_a_sigkilled_job_loses_at_most_its_last_moment_of_metrics(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    profile = local_profile(tmp_path / "hybridml.yaml", mlflow_server.url)
    work = tmp_path / "w"
    work.mkdir()
    (work / "train.py").write_text(KILLED_LOOP)
    job = write_job(work, run=f"{sys.executable} train.py")
    summary, out = submit_json(str(job), "--detach", env={"HML_CONFIG": str(profile)})
    assert out.returncode == 0, out.stderr
    run_id = summary["run_id"]
    deadline = time.monotonic() + 120
    while not (work / "steps.log").exists() or len((work / "steps.log").read_bytes().splitlines()) < 200:
        assert time.monotonic() < deadline, hml("logs", run_id).stdout
        time.sleep(0.2)
    killed_at = time.time()
    os.kill(int((work / "pid").read_text()), signal.SIGKILL)

    final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=120)
    assert final["status"] == "FAILED" and final["exit_code"] == 137, final
    assert "store BufferedRestStore" in hml("logs", run_id).stdout, "the fast path was not on"
    wait_finalized(mlflow_server.client(), run_id)
    landed = sorted(m.step for m in mlflow_server.client().get_metric_history(run_id, "loss"))
    assert landed == list(range(len(landed))), "not the steps up to a point, each once"
    logged = [line.split() for line in (work / "steps.log").read_text().splitlines()]
    lost = [(int(step), float(at)) for step, at in logged if int(step) >= len(landed)]
    assert all(killed_at - at <= LOSS_BOUND_S for _, at in lost), (
        f"{len(lost)} steps lost, the oldest logged {killed_at - lost[0][1]:.2f} s before the kill"
    )


def test_status_shows_the_nodes_latest_gpu_sample_while_the_job_runs(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    profile = local_profile(tmp_path / "hybridml.yaml", mlflow_server.url)
    work = tmp_path / "w"
    work.mkdir()
    (work / "wait.py").write_text("import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.1)\n")
    job = write_job(work, run=f"{sys.executable} wait.py", envs={"TRACKING_SYSTEM_METRICS_S": 0.5})
    gpus = fake_nvidia_smi(tmp_path / "bin")
    env = {"HML_CONFIG": str(profile), "PATH": f"{gpus}{os.pathsep}{os.environ['PATH']}"}
    summary, out = submit_json(str(job), "--detach", env=env)
    assert out.returncode == 0, out.stderr
    run_id = summary["run_id"]
    deadline = time.monotonic() + 120
    while "gpu_0_power_usage_watts" not in (shown := status(run_id, env=env)).get("system", {}):
        assert time.monotonic() < deadline and shown["status"] in ("PENDING", "RUNNING"), shown
        time.sleep(0.5)
    assert shown["status"] == "RUNNING"
    assert shown["system"]["gpu_0_utilization_percentage"] == 97
    assert shown["system"]["gpu_0_power_usage_watts"] == 312.5
    assert 0 <= shown["system"]["cpu_utilization_percentage"] <= 100
    text = hml("status", run_id, env=env).stdout
    assert "gpu_0_utilization_percentage 97," in text and "gpu_1_memory_usage_megabytes 1073.74" in text

    (work / "go").touch()
    final = wait_status(run_id, {"FINISHED", "FAILED", "KILLED"}, timeout=120, env=env)
    assert final["status"] == "FINISHED" and "system" not in final, final


ORDERED = """
import mlflow, os, sys, tempfile
import hml_mlflow_buffer
hml_mlflow_buffer.FLUSH_S = 5  # the sender thread would not send in time: only a flush does
from mlflow.tracking import MlflowClient
run = os.environ["MLFLOW_RUN_ID"]
path = os.path.join(tempfile.mkdtemp(), "latest.pt")
open(path, "w").write("checkpoint")
client = MlflowClient()
client.log_artifact(run, path, "checkpoints")  # the first one reads the run: that flushes anyway
mlflow.log_metric("train_loss", 0.5, step=1)
client.log_artifact(run, path, "checkpoints")  # the cached repository: only the plugin flushes
"""


def test_an_artifact_upload_sends_the_metrics_logged_before_it_first(tmp_path):
    """The order a server sees (a recording stand-in for the relay): the epoch's metric before the
    checkpoint logged after it. A retry that resumes from a checkpoint must find its epoch's
    metrics home, or a host dying between the two loses them for good."""
    import json
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from hmlkit.node import jobscript

    seen: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(f"{self.command} {self.path.split('?')[0]}")
            run = {"info": {"run_id": "r" * 32, "experiment_id": "0", "status": "RUNNING",
                            "artifact_uri": "mlflow-artifacts:/0/" + "r" * 32 + "/artifacts"}}  # fmt: skip
            body = json.dumps({"run": run} if "runs/get" in self.path else {}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    plugin = tmp_path / "plugin"
    meta = plugin / jobscript._BUFFER_META
    meta.mkdir(parents=True)
    node = Path(jobscript.__file__).parent / "plugin" / jobscript.BUFFER
    (plugin / jobscript.BUFFER).write_text(node.read_text())
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: hml-mlflow-buffer\nVersion: 1\n")
    (meta / "entry_points.txt").write_text(jobscript._BUFFER_ENTRY_POINTS)
    uri = f"http://127.0.0.1:{server.server_port}"
    env = {**os.environ, "PYTHONPATH": str(plugin), "MLFLOW_TRACKING_URI": uri, "HML_RELAY_URI": uri,
           "MLFLOW_RUN_ID": "r" * 32, "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
    try:
        out = subprocess.run(
            [sys.executable, "-c", ORDERED], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr
    writes = [s for s in seen if s.startswith(("POST /api/2.0/mlflow/runs/log-batch", "PUT "))]
    assert len(writes) == 3 and writes[0].startswith("PUT") and writes[2].startswith("PUT"), seen
    assert writes[1] == "POST /api/2.0/mlflow/runs/log-batch", seen
