"""Per-node system metrics (CPU, memory, GPUs) into the job's MLflow run, every few seconds.

The job wrapper (hmlkit/node/jobscript.py) starts this beside the job on every node once the relay
(hmlkit/node/relay.py) runs, and stops it when the job ends. It logs through the relay, so a sample
taken while the tracking server is away is journaled and delivered like the job's own metrics.
Like the relay it is copied to hosts that have only ``python3``: standard library only.

Keys follow MLflow's own system metrics (``system/cpu_utilization_percentage``, ...), under
``system/node_<rank>/`` when the job has several nodes. GPUs are read with ``nvidia-smi`` where it
exists (utilisation, memory, and power where the board reports it, per GPU). Settings come from
the job's environment: ``TRACKING_SYSTEM_METRICS_S`` (seconds between samples, default 5, fractions
allowed; 0 turns it off), ``MLFLOW_TRACKING_URI`` (the relay), ``MLFLOW_TRACKING_TOKEN``
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
            info[name] = int(rest.split()[0]) * 1024 / MB  # kB (KiB) -> MB, as MLflow counts them
    used = info["MemTotal"] - info.get("MemAvailable", info["MemFree"])
    return {
        "system_memory_usage_megabytes": used,
        "system_memory_usage_percentage": 100 * used / info["MemTotal"],
    }


MB = 1e6
"""MLflow's system metrics count megabytes of 10**6 bytes (``memory.used / 1e6``)."""
GPU_QUERY = "index,utilization.gpu,memory.used,memory.total,power.draw,power.limit"
"""What ``nvidia-smi --query-gpu`` is asked, in this order (``--format=csv,noheader,nounits``)."""


def parse_gpus(csv: str) -> "dict[str, float]":
    """Each GPU's line of ``nvidia-smi --query-gpu=GPU_QUERY`` under MLflow's own names
    (``gpu_<i>_utilization_percentage``, ``_memory_usage_megabytes`` and ``_percentage``,
    ``_power_usage_watts`` and ``_percentage``). A field a board does not report ("[N/A]",
    "[Not Supported]") is left out, not the whole GPU."""
    found = {}
    for line in csv.splitlines():
        fields = [x.strip() for x in line.split(",")]
        if len(fields) != 6 or not fields[0].isdigit():
            continue
        _, util, used, total, power, limit = (_number(x) for x in fields)
        gpu = f"gpu_{int(fields[0])}_"
        if util is not None:
            found[gpu + "utilization_percentage"] = util
        if used is not None:
            found[gpu + "memory_usage_megabytes"] = used * 2**20 / MB  # nvidia-smi says MiB
            if total:
                found[gpu + "memory_usage_percentage"] = 100 * used / total
        if power is not None:
            found[gpu + "power_usage_watts"] = power
            if limit:
                found[gpu + "power_usage_percentage"] = 100 * power / limit
    return found


def _number(text: str) -> "float | None":
    try:
        return float(text)
    except ValueError:
        return None


def _gpus() -> "dict[str, float]":
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(  # noqa: UP022  (capture_output= and text= are 3.7+: hosts may have 3.6)
            ["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,  # noqa: UP021
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_gpus(out)


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
