"""What sending a leftover journal home costs the runner: N journaled metric writes, a real mlflow server.

    .venv/bin/python bench/bench_backlog.py [--records 3000] [--repeat 3]

A job whose server was away left N ``log-metric`` writes (one step each, as a training loop
makes them) in its relay's journal; the runner replays it (runners/tracking/backlog.py, the relay's own
replay: consecutive metrics merged into ``log-batch`` units of up to 1,000). Baselines in the
same run, on fresh runs of the same server: (i) the same metrics logged one call each with
``MlflowClient.log_metric`` (what the job would have paid live), (ii) logged by hand in
``log_batch`` calls of 1,000 (the floor for any replay). (iii) is the replay, from the journal on
disk to acknowledged; (iv) the same with the first unit in doubt (a history read per key first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import report  # noqa: E402

from hmlkit.node.relay import Journal, Write  # noqa: E402
from runners.tracking.backlog import drain_journal  # noqa: E402
from tests.conftest import MlflowServer, free_port  # noqa: E402

TARGET = "/api/2.0/mlflow/runs/log-metric"


def _metrics(n: int) -> list[dict]:
    return [{"key": "loss", "value": 1.0 / (s + 1), "timestamp": 1_000_000 + s, "step": s} for s in range(n)]


def _journal(root: Path, run_id: str, n: int, doubt: bool) -> None:
    journal = Journal(root)
    for i, m in enumerate(_metrics(n)):
        write = Write("POST", TARGET, {"Content-Type": "application/json"})
        write.body, write.doubt = json.dumps({"run_id": run_id, **m}).encode(), doubt and i == 0
        journal.append(write)
    journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from mlflow.entities import Metric

    n = args.records
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        server = MlflowServer(tmp_path / "mlflow", free_port()).start()
        client = server.client()
        experiment = client.create_experiment("bench-backlog")
        try:

            def one_by_one() -> float:
                run_id = client.create_run(experiment).info.run_id
                start = time.perf_counter()
                for m in _metrics(n):
                    client.log_metric(run_id, m["key"], m["value"], m["timestamp"], m["step"])
                return time.perf_counter() - start

            def batches() -> float:
                run_id = client.create_run(experiment).info.run_id
                metrics = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in _metrics(n)]
                start = time.perf_counter()
                for i in range(0, n, 1000):
                    client.log_batch(run_id, metrics=metrics[i : i + 1000])
                return time.perf_counter() - start

            def replay(doubt: bool) -> float:
                run_id = client.create_run(experiment).info.run_id
                root = tmp_path / f"journal-{run_id}"
                _journal(root, run_id, n, doubt)
                start = time.perf_counter()
                got = drain_journal(root, server.url, time.monotonic() + 600)
                took = time.perf_counter() - start
                assert got.left == 0 and got.sent == n, got
                assert len(client.get_metric_history(run_id, "loss")) == n
                return took

            variants = {
                "(i) live, one log_metric call each": one_by_one,
                "(ii) by hand, log_batch of 1000": batches,
                "(iii) replay of the leftover journal": lambda: replay(False),
                "(iv) replay, first unit in doubt": lambda: replay(True),
            }
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.repeat):  # interleaved, so a noisy neighbour hurts every variant alike
                for name, fn in variants.items():
                    times[name].append(fn())
            median = {name: statistics.median(t) for name, t in times.items()}
            title = f"{n} journaled metrics, median of {args.repeat}"
            live = median["(i) live, one log_metric call each"]
            floor = median["(ii) by hand, log_batch of 1000"]
            report(f"{title}: against logging them live", [(k, v, live) for k, v in median.items()])
            report(f"{title}: against log_batch by hand", [(k, v, floor) for k, v in median.items()])
        finally:
            server.stop()


if __name__ == "__main__":
    main()
