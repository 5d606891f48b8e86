"""Dispatch overhead of the aws target against the ssh target, for the same short job.

    .venv/bin/python bench/bench_aws.py

Both run in one process against this machine's stand-ins: a real moto server whose
instances boot real sshd hosts (tests/awsbed.py), and an sshd host of tests/sshbed.py. What
the ratio shows is what the aws target adds on top of the SSH path: choosing and pricing the
type, RunInstances, waiting for the instance and its first SSH answer, and terminating it.
A real EC2 boot adds tens of seconds more; that part is AWS's, not the runner's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import BIN, report, wall  # noqa: E402

from tests.awsbed import running_aws_bed  # noqa: E402
from tests.sshbed import start_bed  # noqa: E402

JOB = "echo first-line; sleep 1; echo done"


def main() -> None:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "aws").mkdir()
        ssh_bed = start_bed(tmp_path / "bed", 1)
        try:
            with running_aws_bed(tmp_path / "aws") as aws_bed:
                known = tmp_path / "known_hosts"
                known.write_text(ssh_bed.known_hosts_text())
                profile = tmp_path / "hybridml.yaml"
                targets = {"onprem": ssh_bed.target(known), "cloud": aws_bed.target(market="on-demand")}
                profile.write_text(json.dumps({"targets": targets}))
                env = {**os.environ, "HML_HOME": str(tmp_path / "home"), "HML_CONFIG": str(profile)}
                work = tmp_path / "work"
                work.mkdir()
                (work / "job.yaml").write_text(json.dumps({"name": "bench", "run": JOB}))

                def submit(target: str) -> list[str]:
                    return [str(BIN / "hml"), "submit", str(work / "job.yaml"), "--target", target]

                wall(submit("onprem"), repeat=1, env=env)  # warm: code staged, store created
                ssh_total = wall(submit("onprem"), repeat=3, env=env)
                aws_total = wall(submit("cloud"), repeat=3, env=env)
                report(
                    "aws against ssh: whole short job, submit to exit (median of 3)",
                    [(f"aws target ({JOB!r}), instance launched per run", aws_total, ssh_total)],
                )
                left = aws_bed.tagged_running()
                print(f"instances left running: {len(left)}")
        finally:
            ssh_bed.stop()


if __name__ == "__main__":
    main()
