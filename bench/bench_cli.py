"""Runner skeleton figures: CLI start-up and submit-to-first-line latency on the local target.

    .venv/bin/python bench/bench_cli.py

(a) ``hml --help`` and ``hml status RUN`` against ``python -c pass`` in the same run, and a
check that neither imports mlflow, torch, boto3, paramiko or pulumi; (b) the time from
``hml submit`` to the job's first output line against running the same command directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, first_line_latency, median_of, report, wall  # noqa: E402

HEAVY = ("mlflow", "torch", "boto3", "paramiko", "pulumi")
JOB_CMD = "echo first-line"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HML_HOME": f"{tmp}/home"}
        env.pop("HML_CONFIG", None)
        job = Path(tmp) / "job.yaml"
        job.write_text(f"name: bench\nrun: {JOB_CMD}\n")
        hml = str(BIN / "hml")
        out = subprocess.run([hml, "submit", str(job), "-o", "json"], env=env, capture_output=True, text=True)
        run_id = json.loads(out.stdout)["run_id"]

        python = wall([sys.executable, "-c", "pass"], repeat=10)
        help_s = wall([hml, "--help"], repeat=10, env=env)
        status_s = wall([hml, "status", run_id], repeat=10, env=env)
        probe = (
            "import sys; from runners import cli; cli.run(sys.argv[1:]); "
            f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)"
        )
        imported = {}
        for name, args in (("--help", ["--help"]), ("status", ["status", run_id])):
            cmd = [sys.executable, "-c", probe, *args]
            got = subprocess.run(cmd, env=env, capture_output=True, text=True)
            imported[name] = got.stderr.strip().splitlines()[-1]
        report(
            "(a) CLI start-up (median of 10)",
            [
                ("hml --help", help_s, python),
                ("hml status RUN", status_s, python),
            ],
        )
        for name, mods in imported.items():
            print(f"heavy modules imported by hml {name}: {mods}")

        direct = median_of(lambda: first_line_latency(["bash", "-c", JOB_CMD], "first-line"), 5)
        submit = median_of(lambda: first_line_latency([hml, "submit", str(job)], "first-line", env=env), 5)
        report(
            "(b) submit to the job's first output line, local target (median of 5)",
            [
                ("hml submit (embedded SQLite tracking)", submit, direct),
            ],
        )


if __name__ == "__main__":
    main()
