"""On-prem (ssh target) figures, against real sshd hosts from tests/sshbed.py.

    .venv/bin/python bench/bench_ssh.py

(a) submit-to-remote-start latency and (b) whole-job time of a short job, each against
running the same command with plain OpenSSH ``ssh host cmd`` in the same run; (c) file bytes
staged on the first submission of a 1,000-file workdir, on re-submitting it unchanged (goal:
0) and after a one-file change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import BIN, first_line_latency, median_of, plain_ssh, report, wall  # noqa: E402

from tests.sshbed import start_bed  # noqa: E402

JOB = "echo first-line; sleep 1; echo done"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        bed = start_bed(tmp_path / "bed", 1)
        try:
            known = tmp_path / "known_hosts"
            known.write_text(bed.known_hosts_text())
            profile = tmp_path / "hybridml.yaml"
            profile.write_text(json.dumps({"targets": {"onprem": bed.target(known)}}))
            env = {**os.environ, "HML_HOME": str(tmp_path / "home"), "HML_CONFIG": str(profile)}
            host = bed.hosts[0]
            ssh = plain_ssh(host, known)
            work = tmp_path / "work"
            work.mkdir()
            (work / "job.yaml").write_text(json.dumps({"name": "bench", "run": JOB}))
            hml = [str(BIN / "hml"), "submit", str(work / "job.yaml"), "--target", "onprem"]
            subprocess.run(hml, env=env, check=True, capture_output=True)  # warm: code staged once

            plain_start = median_of(lambda: first_line_latency([*ssh, JOB], "first-line"), 5)
            hml_start = median_of(lambda: first_line_latency(hml, "first-line", env=env), 5)
            plain_total = wall([*ssh, JOB], repeat=5)
            hml_total = wall(hml, repeat=5, env=env)
            report(
                "ssh target: latency and overhead (median of 5)",
                [
                    ("(a) submit to remote first line", hml_start, plain_start),
                    (f"(b) whole short job ({JOB!r})", hml_total, plain_total),
                ],
            )

            big = tmp_path / "big"
            for i in range(1000):
                sub = big / f"pkg{i // 100}"
                sub.mkdir(parents=True, exist_ok=True)
                (sub / f"mod{i}.py").write_text(f"VALUE = {i}\n" * 40)
            (big / "job.yaml").write_text(json.dumps({"name": "big", "run": "true"}))

            def staged() -> int:
                out = subprocess.run(
                    [str(BIN / "hml"), "submit", str(big / "job.yaml"), "-t", "onprem", "-o", "json"],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                run_id = json.loads(out.stdout)["run_id"]
                record = json.loads((tmp_path / "home" / "runs" / run_id / "record.json").read_text())
                return sum(n["bytes_staged"] for n in record["handle"]["nodes"])

            first = staged()
            unchanged = staged()
            (big / "pkg3" / "mod300.py").write_text("VALUE = 'changed'\n")
            one_file = staged()
            print("\n## (c) code staging, 1,000-file workdir")
            print(f"first submission:            {first:>9} file bytes sent")
            print(f"re-submit, unchanged:        {unchanged:>9} file bytes sent (goal 0)")
            print(
                f"re-submit, one file changed: {one_file:>9} file bytes sent "
                f"(the file is {len('VALUE = changed') + 3} bytes)"
            )
        finally:
            bed.stop()


if __name__ == "__main__":
    main()
