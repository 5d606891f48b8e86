"""Driving the real ``hml`` executable from tests, as a user would from a shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HML = str(Path(sys.executable).parent / "hml")


def hml(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [HML, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_job(dir_: Path, name: str = "job", **fields: Any) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "experiment": "tests", **fields}
    path = dir_ / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def submit_json(*args: str, **kw: Any) -> tuple[dict[str, Any], subprocess.CompletedProcess]:
    out = hml("submit", *args, "--output", "json", **kw)
    assert out.stdout.strip(), f"no JSON on stdout; stderr:\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1]), out


def status(run_id: str, **kw: Any) -> dict[str, Any]:
    out = hml("status", run_id, "--output", "json", **kw)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_status(run_id: str, want: set[str], timeout: float = 120, **kw: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = status(run_id, **kw)
        if got["status"] in want:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {got['status']} after {timeout}s: {got}")
        time.sleep(0.3)


def wait_finalized(client: Any, run_id: str, timeout: float = 60) -> Any:
    """The MLflow run once the runner closed it (the supervisor may still be uploading)."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get_run(run_id)
        if run.info.status in ("FINISHED", "FAILED", "KILLED") and "hml.reason" in run.data.tags:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} not finalized: {run.info.status}")
        time.sleep(0.3)


def processes_matching(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def process_report(*markers: str) -> str:
    """What a failed process check needs: each process whose command line holds a marker, with
    its parent, state, age and environment's ``SLURM_JOB_ID`` (who started it, whether it was
    orphaned, whether an epilog could have found it), then the process tree (no kernel threads)."""
    pids = sorted({int(line.split()[0]) for m in markers for line in processes_matching(m)})
    lines = []
    for pid in pids:
        shown = _ps("-p", str(pid)).strip()
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            env = []
        job = [e.decode() for e in env if e.startswith(b"SLURM_JOB_ID=")]
        lines.append(f"{shown}  [{' '.join(job) or 'no SLURM_JOB_ID'}]")
    tree = [ln[:200] for ln in _ps("-e", "--forest").splitlines() if ln.split()[1] not in ("0", "2")]
    return "\n".join(["matching (pid ppid stat age args):", *lines, "process tree:", *tree])


def _ps(*select: str) -> str:
    columns = ["-o", "pid=,ppid=,stat=,etimes=,args="]
    return subprocess.run(["ps", "-ww", *columns, *select], capture_output=True, text=True).stdout


def run_report(home: Path, run_id: str, tail: int = 40) -> str:
    """The run's own account of itself: its record and the tails of its supervisor's and job's logs."""
    parts = []
    for name in ("record.json", "supervisor.log", "output.log"):
        path = home / "runs" / run_id / name
        text = path.read_text(errors="replace") if path.exists() else "(missing)"
        parts.append(f"--- {name} (last {tail} lines)\n" + "\n".join(text.splitlines()[-tail:]))
    return "\n".join(parts)


def logging_job(dir_: Path, steps: int, pause: float, gate: bool = False, **fields: Any) -> Path:
    """A loop logging a param, a metric per step and a tag; with ``gate``, the steps wait for a
    file ``go`` in the workdir (the param, logged first, has read the run by then)."""
    code = (
        "import mlflow, os, time\n"
        "mlflow.log_param('steps', %d)\n"
        + ("while not os.path.exists('go'):\n    time.sleep(0.05)\n" if gate else "")
        + "for step in range(%d):\n"
        "    mlflow.log_metric('loss', 1.0 / (step + 1), step=step)\n"
        "    print('step', step, flush=True)\n"
        "    time.sleep(%s)\n"
        "mlflow.set_tag('done', 'yes')\n"
    ) % (steps, steps, pause)
    dir_.mkdir()
    (dir_ / "train.py").write_text(code)
    return write_job(dir_, run=f"{sys.executable} train.py", **fields)


def wait_log(run_id: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in hml("logs", run_id).stdout:
        assert time.monotonic() < deadline, f"{text!r} never appeared: {hml('logs', run_id).stdout}"
        time.sleep(0.2)


def assert_system_metrics(client: Any, run_id: str, prefix: str = "system/", at_least: int = 2) -> None:
    """The node's sampler (hmlkit/node/sysmetrics.py) logged CPU and memory, each sample exactly once."""
    for key in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, prefix + key))
        assert len(steps) >= at_least and steps == list(range(len(steps))), f"{key}: {steps}"
    cpu = client.get_metric_history(run_id, prefix + "cpu_utilization_percentage")
    assert all(0 <= m.value <= 100 for m in cpu)


def wait_param(server: Any, run_id: str, key: str, timeout: float = 60) -> None:
    """Until the run has param ``key`` on the server (a gated job has read its run by then)."""
    deadline = time.monotonic() + timeout
    while key not in server.client().get_run(run_id).data.params:
        assert time.monotonic() < deadline, hml("logs", run_id).stdout
        time.sleep(0.2)


def assert_every_step_once(server: Any, run_id: str, steps: int) -> None:
    client = server.client()
    run = wait_finalized(client, run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["steps"] == str(steps) and run.data.tags["done"] == "yes"
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(steps)), "a step is missing or twice"


DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


def two_node_digits(profile: Path, target: str, epochs: int, mlflow_server: Any, accuracy: float) -> dict:
    """The digits example, unmodified, as a 2-node DDP job under torchrun on ``target``: both
    ranks' output kept, rank 0 logging to MLflow; the run's summary.

    The beds' nodes are this machine, so the test interpreter (which has torch) runs it; a real
    host or image has its own.
    """
    sets = [f"run={sys.executable} train.py", "num_nodes=2", f"epochs={epochs}", "envs.GLOO_SOCKET_IFNAME=lo"]
    args = [a for s in sets for a in ("--set", s)]
    summary, out = submit_json(
        str(DIGITS / "job.yaml"), "--target", target, *args, env={"HML_CONFIG": str(profile)}, timeout=600
    )
    logs = hml("logs", summary["run_id"]).stdout
    assert out.returncode == 0, out.stderr + logs
    assert "[node 0]" in logs and "[node 1]" in logs
    run = wait_finalized(mlflow_server.client(), summary["run_id"])
    assert run.data.params["world_size"] == "2"
    assert run.data.metrics["test_accuracy"] >= accuracy
    return summary
