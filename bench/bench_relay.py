"""What logging costs a training loop: 1,000 steps, 3 metrics a step, against a real mlflow server.

    .venv/bin/python bench/bench_relay.py [--repeat 3]

(i) no logging, (ii) direct synchronous ``MlflowClient.log_metric`` (what ``mlflow.log_metric``
calls), (iii) MLflow's async logging (``synchronous=False``, timed until every write is home),
(iv) through the relay with the server up (the relay forwards each write and answers after the
server did), (v) through the relay with the server unreachable (each write is fsync'd to the
journal and answered at once: what a write-behind relay would cost), (vi) through the relay whose
upstream is a port forwarded over the runner's SSH connection (``tracking_via: runner``: a real
sshd from tests/sshbed.py, paramiko on the runner side). Each loop runs in its own
process, all in this one run, interleaved; each step does the same fixed numpy work first, so the
ratios depend on that work, and the added milliseconds per step do not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import report  # noqa: E402

from tests.conftest import MlflowServer, free_port  # noqa: E402
from tests.hmlkit.test_relay import DEAD, TOKEN, Relay  # noqa: E402
from tests.sshbed import SshBed, start_bed  # noqa: E402

STEPS = 1000
LOOP = """
import json, os, sys, time
import numpy as np
import mlflow

mode = sys.argv[1]
a = np.random.default_rng(0).standard_normal((160, 160)) / 16
if mode != "none":  # unset, the tracking URI would make an mlflow.db here
    client, run_id = mlflow.MlflowClient(), os.environ["MLFLOW_RUN_ID"]
sync = mode != "async"
pending = []
start = time.perf_counter()
for step in range(int(sys.argv[2])):
    b = a
    for _ in range(8):  # the step's own work
        b = np.tanh(b @ a)
    if mode != "none":
        loss = float(b[0, 0])
        for key, value in (("loss", loss), ("acc", 1 - loss), ("lr", 0.1)):
            pending.append(client.log_metric(run_id, key, value, step=step, synchronous=sync))
loop = time.perf_counter() - start
for operation in pending:
    if operation is not None:  # async: wait until the server has it
        operation.wait()
print(json.dumps({"loop": loop, "home": time.perf_counter() - start}))
"""


def run_loop(mode: str, upstream: str | None, server: MlflowServer, steps: int, journal: Path) -> dict:
    """One loop; ``upstream``: the server (direct), or, for the relay variants, the relay's
    upstream: a relay of the run's own is started for it, as the job wrapper does per job."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    relay = None
    if upstream:
        client = server.client()
        run = client.create_run(client.create_experiment(f"bench-{mode}-{os.urandom(4).hex()}"))
        if mode in RELAYED:
            journal.mkdir(exist_ok=True)
            relay = Relay(upstream, journal / os.urandom(4).hex(), run.info.run_id).start()
        uri = relay.url if relay else upstream
        env |= {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_TRACKING_TOKEN": TOKEN}
    try:
        out = subprocess.run([sys.executable, "-c", LOOP, mode, str(steps)], env=env, check=True,
                             capture_output=True, text=True)  # fmt: skip
    finally:
        if relay:
            relay.kill()
    if upstream:
        assert len(server.client().get_metric_history(run.info.run_id, "lr")) == steps or "dead" in mode
    return json.loads(out.stdout.strip().splitlines()[-1])


RELAYED = ("relay", "dead", "forward")


def runner_forward(bed: SshBed, server: MlflowServer, tmp_path: Path) -> tuple[str, Any]:
    """A URL on the bed host forwarded over an SSH connection of this process to ``server``, and
    that connection (the forward lives as long as it does)."""
    from hmlkit.ssh.forward import open_forward
    from hmlkit.ssh.hosts import SshHost, connect

    (tmp_path / "known_hosts").write_text(bed.known_hosts_text())
    h = bed.hosts[0]
    host = SshHost(address=h.address, port=h.port, user=h.user, identity_file=str(h.identity_file))
    ssh = connect(host, tmp_path / "known_hosts")
    return f"http://127.0.0.1:{open_forward(ssh, server.url)}", ssh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    steps = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        server = MlflowServer(tmp_path / "mlflow", free_port()).start()
        bed = start_bed(tmp_path / "bed", 1)
        upstream, ssh = runner_forward(bed, server, tmp_path)
        try:
            variants = {
                "none": ("(i) no logging", None),
                "direct": ("(ii) direct, synchronous", server.url),
                "async": ("(iii) MLflow async logging, until flushed", server.url),
                "relay": ("(iv) through the relay, server up", server.url),
                "dead": ("(v) through the relay, server down (journaled)", DEAD),
                "forward": ("(vi) through the relay, upstream over the runner's SSH", upstream),
            }
            times: dict[str, list[float]] = {mode: [] for mode in variants}
            async_loop: list[float] = []
            for _ in range(args.repeat):  # interleaved, so a noisy neighbour hurts every variant alike
                for mode, (_, uri) in variants.items():
                    result = run_loop(mode, uri, server, steps, tmp_path / "journals")
                    times[mode].append(result["home"])
                    if mode == "async":
                        async_loop.append(result["loop"])
            median = {mode: statistics.median(t) for mode, t in times.items()}
            base, direct = median["none"], median["direct"]
            title = f"{steps} steps x 3 metrics, median of {args.repeat}"
            report(f"{title}: against no logging", [(variants[m][0], median[m], base) for m in variants])
            report(
                f"{title}: against direct logging", [(variants[m][0], median[m], direct) for m in variants]
            )
            print(f"\n(iii) async, loop only (before its flush): {statistics.median(async_loop):.3f} s")
            print("\nadded per step (3 log calls), ms:")
            for mode, (name, _) in variants.items():
                print(f"  {name:52} {(median[mode] - base) / steps * 1000:8.2f}")
        finally:
            ssh.close()
            bed.stop()
            server.stop()


if __name__ == "__main__":
    main()
