"""The node's system-metrics sampler (hmlkit/node/sysmetrics.py) as hosts run it: its own
``python3 -I -S`` process, logging through a real relay into a real MLflow server.

This machine has no GPU, so ``nvidia-smi`` is a stand-in executable that answers the sampler's
query the way the real one does (``--format=csv,noheader,nounits``), and fails on any other
query, so the sampler's question and its reading of the answer are both checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hmlkit.node.sysmetrics import GPU_QUERY
from tests.conftest import MlflowServer
from tests.hmlkit.test_relay import TOKEN, Relay, new_run, relays, start_relay  # noqa: F401 (a fixture)

pytestmark = pytest.mark.server  # an MLflow server and a relay

SAMPLER = Path(__file__).resolve().parents[2] / "hmlkit" / "node" / "sysmetrics.py"
GPU_CSV = "0, 97, 40000, 81559, 312.50, 700.00\n1, 3, 1024, 81559, [N/A], [N/A]\n"
"""Two boards as nvidia-smi lists them: the second one reports no power (older or smaller cards)."""


def fake_nvidia_smi(bin_dir: Path) -> Path:
    """A directory holding an ``nvidia-smi`` that prints ``GPU_CSV`` for the sampler's query only."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    expected = f"--query-gpu={GPU_QUERY} --format=csv,noheader,nounits"
    script.write_text(
        f'#!/bin/sh\n[ "$*" = "{expected}" ] || {{ echo "unknown query: $*" >&2; exit 6; }}\n'
        f"printf '{GPU_CSV.replace(chr(10), chr(92) + 'n')}'\n"
    )
    script.chmod(0o755)
    return bin_dir


def test_the_stand_in_answers_as_nvidia_smi_does(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin")
    query = [str(bin_dir / "nvidia-smi"), f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"]
    assert subprocess.run(query, capture_output=True, text=True, check=True).stdout == GPU_CSV
    assert subprocess.run(query[:2], capture_output=True).returncode == 6


def test_gpu_metrics_are_logged_per_gpu_under_mlflows_names(
    tmp_path: Path,
    relays: list[Relay],  # noqa: F811 (the fixture)
    mlflow_server: MlflowServer,
) -> None:
    run_id = new_run(mlflow_server.url)
    relay = start_relay(relays, mlflow_server.url, tmp_path / "journal", run_id)
    path = f"{fake_nvidia_smi(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    env = {
        "PATH": path,
        "MLFLOW_TRACKING_URI": relay.url,
        "MLFLOW_TRACKING_TOKEN": TOKEN,
        "MLFLOW_RUN_ID": run_id,
        "TRACKING_SYSTEM_METRICS_S": "0.2",  # fractions of a second are allowed
    }
    sampler = subprocess.Popen([sys.executable, "-I", "-S", str(SAMPLER)], env=env, stderr=subprocess.PIPE)
    client = mlflow_server.client()
    try:
        deadline = time.monotonic() + 60
        while len(client.get_metric_history(run_id, "system/gpu_0_utilization_percentage")) < 3:
            assert sampler.poll() is None, sampler.communicate()[1]
            assert time.monotonic() < deadline, "fewer than 3 samples in 60 s at 0.2 s apart"
            time.sleep(0.2)
    finally:
        sampler.terminate()
        sampler.wait(timeout=30)
    metrics = client.get_run(run_id).data.metrics
    gpus = {k: round(v, 2) for k, v in metrics.items() if k.startswith("system/gpu_")}
    assert gpus == {
        "system/gpu_0_utilization_percentage": 97.0,
        "system/gpu_0_memory_usage_megabytes": round(40000 * 2**20 / 1e6, 2),  # MiB as MLflow's MB
        "system/gpu_0_memory_usage_percentage": round(100 * 40000 / 81559, 2),
        "system/gpu_0_power_usage_watts": 312.5,
        "system/gpu_0_power_usage_percentage": round(100 * 312.5 / 700, 2),
        "system/gpu_1_utilization_percentage": 3.0,
        "system/gpu_1_memory_usage_megabytes": round(1024 * 2**20 / 1e6, 2),
        "system/gpu_1_memory_usage_percentage": round(100 * 1024 / 81559, 2),
    }
    steps = [m.step for m in client.get_metric_history(run_id, "system/gpu_0_power_usage_watts")]
    assert steps == list(range(len(steps))), "a sample lost or twice"
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
