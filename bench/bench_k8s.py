"""Kubernetes target figures, against the real control plane of the test bed (tests/k8sbed.py).

    .venv/bin/python bench/bench_k8s.py [--repeat N] [--pods N]

(a) submit-to-first-line latency of a short job through ``hml submit --target cluster``, against
the same Indexed Job through ``kubectl create -f`` then ``kubectl logs -f`` (what a person
watching the job does), in the same run on the same bed. Both pay the same scheduling, Job
controller and pod start; the ratio is what hml adds (the workdir ConfigMap, Secret and
Service, the MLflow run, following by polling). Goal: at most 1.5x.

(b) what following a many-pod job costs the supervisor: API requests per pod per second for a
``--pods``-pod job (default 32) and a 1-pod job of the same length, from the request count the
supervisor writes to its log. Flat per pod means the 32-pod figure is about the 1-pod one.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import BIN, report  # noqa: E402

from tests.k8sbed import bin_dir, start_k8s  # noqa: E402

JOB = "echo line-a; sleep 2; echo line-b"


def first_line(cmd: list[str], expect: str, env: dict[str, str] | None = None) -> float:
    """Seconds until ``expect`` shows on ``cmd``'s stdout; ``cmd`` is then stopped (``kubectl logs
    -f`` on the bed's nodes follows until killed)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if expect in line:
                return time.perf_counter() - start
        raise RuntimeError(f"{expect!r} never appeared from {cmd}")
    finally:
        proc.kill()
        proc.wait()


def plain_job(name: str, image: str, selector: dict[str, str], tolerations: list[dict[str, str]]) -> dict:
    pod = {
        "restartPolicy": "Never",
        "nodeSelector": selector,
        "tolerations": tolerations,
        "containers": [{"name": "job", "image": image, "command": ["bash", "-c", JOB]}],
    }
    spec = {"completionMode": "Indexed", "completions": 1, "parallelism": 1, "backoffLimit": 0}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {**spec, "template": {"spec": pod}},
    }


def requests_per_pod_second(env: dict[str, str], job: Path, pods: int) -> float:
    out = subprocess.run(
        [
            str(BIN / "hml"),
            "submit",
            str(job),
            "--target",
            "cluster",
            "--set",
            f"num_nodes={pods}",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    summary = json.loads(out.stdout)
    log = (Path(summary["log"]).parent / "supervisor.log").read_text()
    followed, sent = re.findall(r"followed for ([\d.]+) s; target commands so far: (\d+)", log)[-1]
    return int(sent) / pods / float(followed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pods", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        bed = start_k8s(tmp_path / "k8s")
        try:
            target = bed.target()
            profile = tmp_path / "hybridml.yaml"
            profile.write_text(json.dumps({"targets": {"cluster": target}}))
            env = {**os.environ, "HML_HOME": str(tmp_path / "home"), "HML_CONFIG": str(profile)}
            kenv = {**os.environ, "KUBECONFIG": str(bed.kubeconfig)}
            kubectl = str(bin_dir() / "kubectl")
            work = tmp_path / "work"
            work.mkdir()
            (work / "job.yaml").write_text(json.dumps({"name": "bench", "run": JOB}))
            hml = [str(BIN / "hml"), "submit", str(work / "job.yaml"), "--target", "cluster"]
            subprocess.run(hml, env=env, capture_output=True, check=True)  # warm: the local tracking server

            def plain() -> float:
                name = f"plain-{time.monotonic_ns()}"
                manifest = tmp_path / f"{name}.json"
                job = plain_job(name, target["image"], target["node_selector"], target["tolerations"])
                manifest.write_text(json.dumps(job))
                follow = (
                    f"{kubectl} create -f {manifest} >/dev/null && "
                    f"until {kubectl} logs -f job/{name} 2>/dev/null; do sleep 0.1; done"
                )
                return first_line(["bash", "-c", follow], "line-a", env=kenv)

            plain_start = statistics.median(plain() for _ in range(args.repeat))
            hml_start = statistics.median(first_line(hml, "line-a", env=env) for _ in range(args.repeat))
            (work / "long.yaml").write_text(json.dumps({"name": "pods", "run": "sleep 20"}))
            many = requests_per_pod_second(env, work / "long.yaml", args.pods)
            one = requests_per_pod_second(env, work / "long.yaml", 1)
            report(
                f"kubernetes target on the k8s bed (median of {args.repeat})",
                [
                    (
                        "(a) submit to first line (plain: kubectl create -f, then logs -f)",
                        hml_start,
                        plain_start,
                    ),
                    (f"(b) API requests per pod per second, {args.pods} pods vs 1", many, one),
                ],
            )
        finally:
            bed.stop()


if __name__ == "__main__":
    main()
