"""Sweep figures (issue 28): what a trial costs to dispatch, and how a sweep fills its hosts.

    .venv/bin/python bench/bench_sweep.py [--repeat N] [--trials N] [--ssh-trials N]

(a) dispatch cost per trial: the time the sweep's supervisor spends submitting one trial (its
    ``submitted in`` note: plan, placement, budget, MLflow run, record, the run's supervisor
    started) against one plain ``hml submit --detach`` of the same job to the same target,
    the way a user meets it (goal <= 1.2x);
(b) with ``--ssh-trials N`` (default 0: skipped; the issue's figure is 32): the wall time of
    an N-trial sweep, 4 at once, on 4 SSH hosts of one GPU each (``--target auto``), against
    the sum of its trials' running times divided by 4.

Both against a real MLflow server; the trial job logs its metric with the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import BIN, report, wall  # noqa: E402

from tests.conftest import MlflowServer, free_port  # noqa: E402
from tests.runners.test_sweep import quad_job, space  # noqa: E402
from tests.sshbed import start_bed  # noqa: E402

HML = str(BIN / "hml")


def run_sweep(job: Path, space_file: Path, env: dict[str, str], target: str) -> tuple[dict, float]:
    started = time.perf_counter()
    out = subprocess.run(
        [HML, "sweep", str(job), "--space", str(space_file), "-t", target, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - started
    if out.returncode:
        raise RuntimeError(f"sweep exited {out.returncode}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), took


def dispatch(tmp: Path, server: MlflowServer, repeat: int, trials: int) -> list[tuple[str, float, float]]:
    profile = tmp / "local.yaml"
    profile.write_text(yaml.safe_dump({"tracking_uri": server.url, "targets": {"local": {"kind": "local"}}}))
    env = {**os.environ, "HML_HOME": str(tmp / "home-local"), "HML_CONFIG": str(profile)}
    job = quad_job(tmp / "local-job", steps=2, pause=0.1)
    wall([HML, "submit", str(job), "--detach", "-t", "local"], repeat=1, env=env)  # warm: agent, server
    plain = wall([HML, "submit", str(job), "--detach", "-t", "local"], repeat=repeat, env=env)
    space_file = tmp / "space.yaml"
    space_file.write_text(yaml.safe_dump(space(max_trials=trials, parallel=2, sampler="random")))
    final, _ = run_sweep(job, space_file, env, "local")
    log = Path(final["log"]).read_text()
    per_trial = [float(s) for s in re.findall(r"submitted in ([0-9.]+) s", log)]
    assert len(per_trial) == trials, log
    return [
        (
            f"dispatch per trial (median of {trials}) vs hml submit --detach",
            statistics.median(per_trial),
            plain,
        )
    ]


def ssh_sweep(tmp: Path, server: MlflowServer, trials: int) -> list[tuple[str, float, float]]:
    bed = start_bed(tmp / "bed", 4)
    try:
        known = tmp / "known_hosts"
        known.write_text(bed.known_hosts_text())
        target = bed.target(known)
        for host in target["hosts"]:
            host["gpus"] = 1
        profile = tmp / "ssh.yaml"
        profile.write_text(yaml.safe_dump({"tracking_uri": server.url, "targets": {"onprem": target}}))
        env = {**os.environ, "HML_HOME": str(tmp / "home-ssh"), "HML_CONFIG": str(profile)}
        job = quad_job(tmp / "ssh-job", steps=4, pause=0.5, resources={"gpus": 1})
        space_file = tmp / "ssh-space.yaml"
        space_file.write_text(yaml.safe_dump(space(max_trials=trials, parallel=4, sampler="random")))
        final, took = run_sweep(job, space_file, env, "auto")
        home = Path(env["HML_HOME"]) / "runs"
        ran = 0.0
        for t in final["trials"]:
            record = json.loads((home / t["run_id"] / "record.json").read_text())
            ran += record["ended_at"] - record["started_at"]
        return [(f"{trials}-trial sweep on 4 ssh hosts vs sum of trials / 4", took, ran / 4)]
    finally:
        bed.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--ssh-trials", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        runtime = tmp / "xdg"  # this run's own agent, stopped at the end
        runtime.mkdir(mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        server = MlflowServer(tmp / "mlflow", free_port()).start()
        try:
            rows = dispatch(tmp, server, args.repeat, args.trials)
            if args.ssh_trials:
                rows += ssh_sweep(tmp, server, args.ssh_trials)
        finally:
            server.stop()
            subprocess.run([HML, "agent", "stop"], capture_output=True)
    report("sweeps: a trial's dispatch and a sweep's wall time against their baselines (medians)", rows)


if __name__ == "__main__":
    main()
