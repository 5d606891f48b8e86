"""Supervisor scale (issue 14): one job on 1 to 32 sshd hosts of the loopback bed.

    .venv/bin/python bench/bench_scale.py [--nodes 1,2,4,8,16,32] [--window 6]

For each node count, a job whose every node prints a time-stamped line twice a second:
SSH commands per second while following, besides the one stream opened per node (from the
supervisor's own count in supervisor.log, less launch, cancel and release; goal: flat, not
growing with the nodes), supervisor CPU per node over the window (goal:
flat), output latency from a line's time stamp to the line in the run log (goal: < 1 s, the
worst across nodes), and the time from ``hml cancel`` until no process is left on any host
(goal: < 5 s). Polling, as before streaming, cost 2 SSH commands per node per second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import BIN  # noqa: E402

from tests.conftest import MlflowServer, free_port  # noqa: E402
from tests.sshbed import MARKER_VAR, Host, _proc_table, start_bed  # noqa: E402

HML = str(BIN / "hml")
JOB = 'while true; do echo "tick $(date +%s.%N)"; sleep 0.5; done'
TICKS = re.compile(r"^\[node (\d+)\] tick (\d+\.\d+)$|^tick (\d+\.\d+)$")
COMMANDS = re.compile(r"target commands so far: (\d+)")
HZ = os.sysconf("SC_CLK_TCK")


def left_on(hosts: list[Host]) -> bool:
    """Whether any live process carries one of the hosts' markers (one pass over /proc)."""
    needles = {f"{MARKER_VAR}={h.marker}".encode() for h in hosts}
    for pid, (_, state) in _proc_table().items():
        if state == "Z":
            continue
        try:
            env = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if env & needles:
            return True
    return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def one(tmp: Path, bed, server_url: str, n: int, window: float) -> dict[str, float]:
    known = tmp / "known_hosts"
    target = bed.target(known)
    target["hosts"] = target["hosts"][:n]
    profile = tmp / f"profile-{n}.yaml"
    profile.write_text(json.dumps({"tracking_uri": server_url, "targets": {"onprem": target}}))
    env = {**os.environ, "HML_HOME": str(tmp / "home"), "HML_CONFIG": str(profile)}
    work = tmp / f"work-{n}"
    work.mkdir()
    (work / "job.yaml").write_text(json.dumps({"name": f"scale-{n}", "run": JOB, "num_nodes": n}))
    out = subprocess.run(
        [HML, "submit", str(work / "job.yaml"), "-t", "onprem", "--detach", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout)
    log, run_dir = Path(summary["log"]), Path(summary["log"]).parent
    pos, seen, latencies = 0, set(), []

    def read_new() -> None:
        nonlocal pos
        if not log.exists():
            return
        with open(log) as fh:
            fh.seek(pos)
            data = fh.read()
        complete = data[: data.rfind("\n") + 1]
        pos += len(complete.encode())
        now = time.time()
        for line in complete.splitlines():
            m = TICKS.match(line)
            if m:
                seen.add(int(m.group(1) or 0))
                latencies.append(now - float(m.group(2) or m.group(3)))

    deadline = time.monotonic() + 120
    while len(seen) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} nodes: output from only {len(seen)} after 120 s")
        read_new()
        time.sleep(0.02)
    record = json.loads((run_dir / "record.json").read_text())
    pid = record["supervisor_pid"]
    latencies.clear()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - t0 < window:
        read_new()
        time.sleep(0.02)
    cpu = cpu_seconds(pid) - cpu0
    elapsed = time.monotonic() - t0
    cancel0 = time.monotonic()
    cancelled = subprocess.run([HML, "cancel", summary["run_id"]], env=env, capture_output=True, text=True)
    if cancelled.returncode:
        raise RuntimeError(f"hml cancel: {cancelled.stdout}{cancelled.stderr}")
    while left_on(bed.hosts[:n]):
        if time.monotonic() - cancel0 > 60:
            raise RuntimeError(f"{n} nodes: processes left 60 s after cancel")
        time.sleep(0.05)
    cancel_s = time.monotonic() - cancel0
    time.sleep(0.5)  # the supervisor writes its count after teardown
    sup_log = (run_dir / "supervisor.log").read_text()
    counts = [int(c) for c in COMMANDS.findall(sup_log)]
    launch = int(re.findall(r"started after (\d+) target commands", sup_log)[0])
    followed = float(re.findall(r"followed for ([\d.]+) s", sup_log)[-1])
    # after the launch: one stream opened per node, then cancel and release (one command per
    # node each); what is left is what following cost while the job ran
    following = counts[-1] - launch - 3 * n
    latencies.sort()
    return {
        "nodes": n,
        "ssh_cmds_per_s": following / followed,
        "streams": n,
        "cpu_ms_per_node_s": 1000 * cpu / elapsed / n,
        "latency_p50_s": latencies[len(latencies) // 2],
        "latency_max_s": latencies[-1],
        "cancel_s": cancel_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", default="1,2,4,8,16,32")
    parser.add_argument("--window", type=float, default=6.0)
    args = parser.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = MlflowServer(tmp / "mlflow", free_port()).start()
        bed = start_bed(tmp / "bed", max(sizes))
        try:
            (tmp / "known_hosts").write_text(bed.known_hosts_text())
            rows = [one(tmp, bed, server.url, n, args.window) for n in sizes]
        finally:
            bed.stop()
            server.stop()
    print("\n## supervisor scale, one job on N sshd hosts (goals: flat, flat, < 1 s, < 5 s)")
    print(
        f"{'nodes':>5} {'streams':>8} {'ssh cmds/s':>11} {'CPU ms/node/s':>14} "
        f"{'p50 s':>12} {'max':>7} {'cancel s':>9}"
    )
    for r in rows:
        print(
            f"{r['nodes']:>5} {r['streams']:>8} {r['ssh_cmds_per_s']:>11.2f} {r['cpu_ms_per_node_s']:>14.2f} "
            f"{r['latency_p50_s']:>12.3f} {r['latency_max_s']:>7.3f} {r['cancel_s']:>9.2f}"
        )
    print("polling before streaming: 2 ssh cmds per node per second (2N/s)")


if __name__ == "__main__":
    main()
