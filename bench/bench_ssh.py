"""On-prem (ssh target) staging, against real sshd hosts from tests/sshbed.py.

    .venv/bin/python bench/bench_ssh.py

File bytes staged on the first submission of a 1,000-file workdir, on re-submitting it
unchanged (goal: 0) and after a one-file change. Latency against plain ``ssh host cmd`` is
bench/bench_dispatch.py's.
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
from _common import BIN  # noqa: E402

from tests.sshbed import start_bed  # noqa: E402


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
            print("\n## code staging, 1,000-file workdir")
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
