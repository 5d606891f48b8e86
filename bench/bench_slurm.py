"""Slurm target figures, against the real Slurm bed (tests/slurmbed.py) and its sshd login node.

    .venv/bin/python bench/bench_slurm.py [--repeat N]

(a) submit-to-first-line latency and (b) whole-job time of a short job through
``hml submit --target cluster``, each against the same job through plain ``sbatch`` on the
login node over plain OpenSSH in the same run: for (a) ``sbatch`` then ``tail -f`` of its
output file (what a person watching the job does), for (b) ``sbatch --wait`` then ``cat``.
Both sides pay the same Slurm scheduling; the ratio is what hml adds (staging, wrapper,
MLflow run, following by polling ``squeue``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import BIN, first_line_latency, median_of, plain_ssh, report, wall  # noqa: E402

from tests.slurmbed import start_slurm  # noqa: E402
from tests.sshbed import start_bed  # noqa: E402

JOB = "echo line-a; sleep 2; echo line-b"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ssh_bed = start_bed(tmp_path / "ssh", 1)
        slurm = None
        try:
            slurm = start_slurm(tmp_path / "slurm", 2)
            known = tmp_path / "known_hosts"
            known.write_text(ssh_bed.known_hosts_text())
            login = ssh_bed.hosts[0]
            profile = tmp_path / "hybridml.yaml"
            profile.write_text(json.dumps({"targets": {"cluster": slurm.target(login, known)}}))
            env = {**os.environ, "HML_HOME": str(tmp_path / "home"), "HML_CONFIG": str(profile)}
            ssh = plain_ssh(login, known)
            out = shlex.quote(str(slurm.root / "shared" / "plain-%j.out"))
            setup = f"export SLURM_CONF={shlex.quote(str(slurm.conf))}; cd {shlex.quote(str(slurm.root))}"
            sbatch = f"sbatch --parsable --output={out} --wrap={shlex.quote(JOB)}"
            follow = (
                f"{setup}; j=$({sbatch}); f=shared/plain-$j.out; "
                'until [ -s "$f" ]; do sleep 0.1; done; '
                'tail -n +1 -f "$f" & t=$!; '
                "while squeue -h -j $j -o %i | grep -q .; do sleep 0.1; done; kill $t"
            )
            whole = f'{setup}; j=$({sbatch} --wait); cat "shared/plain-$j.out"'
            work = tmp_path / "work"
            work.mkdir()
            (work / "job.yaml").write_text(json.dumps({"name": "bench", "run": JOB}))
            hml = [str(BIN / "hml"), "submit", str(work / "job.yaml"), "--target", "cluster"]
            wall(hml, repeat=1, env=env)  # warm: code staged once
            wall([*ssh, whole], repeat=1)

            plain_start = median_of(lambda: first_line_latency([*ssh, follow], "line-a"), repeat)
            hml_start = median_of(lambda: first_line_latency(hml, "line-a", env=env), repeat)
            plain_total = wall([*ssh, whole], repeat=repeat)
            hml_total = wall(hml, repeat=repeat, env=env)
            report(
                f"slurm target: latency and overhead of {JOB!r} (median of {repeat})",
                [
                    ("(a) submit to first line (plain: sbatch, then tail -f)", hml_start, plain_start),
                    ("(b) whole job (plain: sbatch --wait, then cat)", hml_total, plain_total),
                ],
            )
        finally:
            if slurm is not None:
                slurm.stop()
            ssh_bed.stop()


if __name__ == "__main__":
    main()
