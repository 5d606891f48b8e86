"""Per-node system metrics (CPU, memory, GPUs) into the job's MLflow run, every few seconds.

The job wrapper (hmlkit/node/jobscript.py) starts this beside the job on every node once the relay
(hmlkit/node/relay.py) runs, and stops it when the job ends. It logs through the relay, so a sample
taken while the tracking server is away is journaled and delivered like the job's own metrics.
Like the relay it is copied to hosts that have only ``python3``: standard library only.

Keys follow MLflow's own system metrics (``system/cpu_utilization_percentage``, ...), under
``system/node_<rank>/`` when the job has several nodes. GPUs are read with ``nvidia-smi`` where it
exists. Settings come from the job's environment: ``TRACKING_SYSTEM_METRICS_S`` (seconds between
samples, default 5; 0 turns it off), ``MLFLOW_TRACKING_URI`` (the relay), ``MLFLOW_TRACKING_TOKEN``
(the job's token for it), ``MLFLOW_RUN_ID``.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.request


def _cpu_times() -> "tuple[int, int]":
    """(idle, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def _memory() -> "dict[str, float]":
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            info[name] = int(rest.split()[0]) / 1024  # kB -> MB
    used = info["MemTotal"] - info.get("MemAvailable", info["MemFree"])
    return {
        "system_memory_usage_megabytes": used,
        "system_memory_usage_percentage": 100 * used / info["MemTotal"],
    }


def _gpus() -> "dict[str, float]":
    if not shutil.which("nvidia-smi"):
        return {}
    query = "index,utilization.gpu,memory.used,memory.total"
    try:
        out = subprocess.run(  # noqa: UP022  (capture_output= and text= are 3.7+: hosts may have 3.6)
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,  # noqa: UP021
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.splitlines():
        try:
            index, util, used, total = (float(x) for x in line.split(","))
        except ValueError:
            continue  # "[N/A]" on some boards
        gpu = f"gpu_{int(index)}"
        found[f"{gpu}_utilization_percentage"] = util
        found[f"{gpu}_memory_usage_megabytes"] = used
        found[f"{gpu}_memory_usage_percentage"] = 100 * used / total if total else 0.0
    return found


def _post(uri: str, token: str, run_id: str, metrics: "list[dict[str, object]]") -> None:
    body = json.dumps({"run_id": run_id, "metrics": metrics}).encode()
    request = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/runs/log-batch",
        data=body,
        # the job's token: its relay serves no one else (hmlkit/node/relay.py)
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


def main() -> None:
    interval = float(os.environ.get("TRACKING_SYSTEM_METRICS_S") or 5)
    uri, run_id = os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_RUN_ID"]
    token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    several = int(os.environ.get("HML_NUM_NODES") or 1) > 1
    prefix = f"system/node_{os.environ.get('HML_NODE_RANK', '0')}/" if several else "system/"
    idle, total = _cpu_times()
    step = 0
    while interval > 0:
        time.sleep(interval)
        idle2, total2 = _cpu_times()
        busy = 100 * (1 - (idle2 - idle) / (total2 - total)) if total2 > total else 0.0
        idle, total = idle2, total2
        values = {"cpu_utilization_percentage": busy, **_memory(), **_gpus()}
        now = int(time.time() * 1000)
        metrics = [
            {"key": prefix + k, "value": round(v, 3), "timestamp": now, "step": step}
            for k, v in values.items()
        ]
        try:
            _post(uri, token, run_id, metrics)
        except OSError:
            pass  # the relay journals when the server is away; this only misses when the relay is gone
        step += 1


if __name__ == "__main__":
    main()
