"""What logging every step costs a training loop, on the CPU and (where CUDA exists) on the GPU.

    .venv/bin/python bench/bench_relay.py [--steps 300] [--repeat 3] [--cpu-only]

One ``mlflow.log_metric("loss", ...)`` a step of a 4-layer MLP's training (forward, backward,
Adam, ``loss.item()`` in every variant, so only logging differs), against a real ``mlflow
server`` (SQLite), each loop in its own process, the variants interleaved, in one run:

(i) no logging; (ii) direct, synchronous (MLflow's default); (iii) MLflow's asynchronous logging
(``MLFLOW_ENABLE_ASYNC_LOGGING``), timed for the loop, and until flushed; (iv) hml: the same
script through ``hml submit`` on the local target (the job wrapper, its relay, the buffered
client of hmlkit/node/plugin/hml_mlflow_buffer.py); (v) hml with that client off
(``TRACKING_FAST_LOGGING=0``: MLflow's client, one request a call, into the relay).

The CPU model (128 wide, batch 256, one thread) is sized to a few milliseconds a step, like the
GPU's (4096 wide, batch 1024: about 6 ms on an H200, issue 26). Every logging variant is checked
to have landed every step exactly once. Without CUDA the GPU part is skipped, saying so; the CPU part
always runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
from tests.conftest import MlflowServer, free_port  # noqa: E402

HML = str(Path(sys.executable).parent / "hml")
WORKLOADS = {"cpu": (128, 256), "cuda": (4096, 1024)}  # (width, batch)
WARMUP = 20

TRAIN = """
import json, os, sys, time
import torch

device, log = sys.argv[1], sys.argv[5]
width, batch, steps = (int(a) for a in sys.argv[2:5])
torch.manual_seed(0)
layers = []
for _ in range(4):
    layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
model = torch.nn.Sequential(*layers[:-1]).to(device)
opt = torch.optim.Adam(model.parameters(), 1e-4)
x, y = torch.randn(batch, width, device=device), torch.randn(batch, width, device=device)
if log != "none":
    import mlflow

def step():
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()

for _ in range(WARMUP):
    step()
start = time.perf_counter()
for i in range(steps):
    value = step()
    if log != "none":
        mlflow.log_metric("loss", value, step=i)
loop = time.perf_counter() - start
if log == "async":
    mlflow.flush_async_logging()
print("BENCH " + json.dumps({"loop": loop, "home": time.perf_counter() - start}), flush=True)
""".replace("WARMUP", str(WARMUP))


def _result(text: str) -> dict[str, float]:
    line = next(ln for ln in reversed(text.splitlines()) if ln.startswith("BENCH "))
    return json.loads(line[len("BENCH ") :])


def _landed(server: MlflowServer, run_id: str, steps: int) -> None:
    got = sorted(m.step for m in server.client().get_metric_history(run_id, "loss"))
    assert got == list(range(steps)), f"run {run_id}: {len(got)} of {steps} steps landed, or some twice"


class Bench:
    def __init__(self, tmp: Path, server: MlflowServer, steps: int) -> None:
        self.tmp, self.server, self.steps = tmp, server, steps
        self.base_env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",  # the CPU model: one core, as steady as this machine allows
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
            "HML_HOME": str(tmp / "hml-home"),
            "HML_LOCAL_SERVER": "0",
        }
        (tmp / "train.py").write_text(TRAIN)
        self.profile = tmp / "hybridml.yaml"
        self.profile.write_text(
            yaml.safe_dump({"tracking_uri": server.url, "targets": {"local": {"kind": "local"}}})
        )
        self.experiment = server.client().create_experiment(f"bench-{time.time_ns()}")

    def args(self, device: str, log: str) -> list[str]:
        width, batch = WORKLOADS[device]
        return [str(self.tmp / "train.py"), device, str(width), str(batch), str(self.steps), log]

    def direct(self, device: str, mode: str) -> dict[str, float]:
        """(i) to (iii): the script run here, logging to the server itself (or not at all)."""
        env = dict(self.base_env)
        run_id = None
        if mode != "none":
            run_id = self.server.client().create_run(self.experiment).info.run_id
            env |= {"MLFLOW_TRACKING_URI": self.server.url, "MLFLOW_RUN_ID": run_id}
            env |= {"MLFLOW_ENABLE_ASYNC_LOGGING": "true"} if mode == "async" else {}
        out = subprocess.run(
            [sys.executable, *self.args(device, mode)], env=env, capture_output=True, text=True, cwd=self.tmp
        )
        if out.returncode:
            raise RuntimeError(f"{mode} on {device}: {out.stderr[-2000:]}")
        if run_id:
            _landed(self.server, run_id, self.steps)
        return _result(out.stdout)

    def hml(self, device: str, log: str, fast: bool = True) -> dict[str, float]:
        """(iv), (v): ``hml submit`` of the same script; the step times are the job's own."""
        line = " ".join([sys.executable, *self.args(device, log)])
        envs = {"OMP_NUM_THREADS": "1", **({} if fast else {"TRACKING_FAST_LOGGING": "0"})}
        spec = {"name": "bench", "experiment": "bench", "run": line, "envs": envs}
        if device == "cuda":
            spec["resources"] = {"gpus": 1}
        job = self.tmp / "job.yaml"
        job.write_text(yaml.safe_dump(spec))
        env = {**self.base_env, "HML_CONFIG": str(self.profile)}
        submit = [HML, "submit", str(job), "--output", "json"]
        out = subprocess.run(submit, env=env, capture_output=True, text=True, cwd=self.tmp)
        summary = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
        if summary.get("status") != "FINISHED":
            raise RuntimeError(f"hml on {device}: {out.stderr[-2000:]}\n{out.stdout[-2000:]}")
        logs = subprocess.run([HML, "logs", summary["run_id"]], env=env, capture_output=True, text=True)
        if log != "none":
            _landed(self.server, summary["run_id"], self.steps)
        return _result(logs.stdout)


VARIANTS = {
    "none": "(i) no logging",
    "direct": "(ii) direct, synchronous",
    "async": "(iii) MLflow async (loop)",
    "async-home": "(iii) MLflow async (until flushed)",
    "hml-none": "(iv) hml, the job not logging",
    "hml": "(iv) hml: relay + buffered client",
    "hml-sync": "(v) hml, TRACKING_FAST_LOGGING=0",
}
"""Why "(iv) hml, the job not logging": the same script under ``hml submit`` without a log call. The
processes beside the job (supervisor, relay, system-metrics sampler, the server taking batches)
share the machine's cores with it, which on a small machine shows in the step time whether the
job logs or not; "hml" against it is what the logging itself costs."""


def measure(bench: Bench, device: str, repeat: int) -> dict[str, float]:
    """Median seconds of each variant's loop, interleaved so a noisy neighbour hurts all alike."""
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeat):
        for mode in ("none", "direct", "async"):
            got = bench.direct(device, mode)
            times[mode].append(got["loop"])
            if mode == "async":
                times["async-home"].append(got["home"])
        times["hml-none"].append(bench.hml(device, "none")["loop"])
        times["hml"].append(bench.hml(device, "hml")["loop"])
        times["hml-sync"].append(bench.hml(device, "hml", fast=False)["loop"])
    return {v: statistics.median(t) for v, t in times.items()}


def show(device: str, median: dict[str, float], steps: int, repeat: int) -> None:
    base = median["none"]
    width, batch = WORKLOADS[device]
    print(f"\n## {device}: 4-layer MLP {width} wide, batch {batch}, {steps} steps, median of {repeat}")
    print(f"{'variant':40} {'ms/step':>9} {'vs none':>9} {'added ms/step':>14}")
    for mode, name in VARIANTS.items():
        per_step = median[mode] / steps * 1000
        added = (median[mode] - base) / steps * 1000
        print(f"{name:40} {per_step:9.2f} {median[mode] / base:8.2f}x {added:14.2f}")
    under = median["hml"] / median["hml-none"]
    added = (median["hml"] - median["hml-none"]) / steps * 1000
    print(f"logging under hml, against the same job not logging: {under:.2f}x, {added:.2f} ms a step")


def cuda_available() -> bool:
    probe = "import torch; print(torch.cuda.is_available())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU part even where CUDA exists")
    args = parser.parse_args()
    devices = ["cpu"]
    if args.cpu_only:
        print("GPU: skipped (--cpu-only)")
    elif cuda_available():
        devices.append("cuda")
    else:
        print("GPU: skipped: torch.cuda.is_available() is False here (no CUDA device or driver)")
    with tempfile.TemporaryDirectory() as tmp:
        server = MlflowServer(Path(tmp) / "mlflow", free_port()).start()
        try:
            bench = Bench(Path(tmp), server, args.steps)
            for device in devices:
                show(device, measure(bench, device, args.repeat), args.steps, args.repeat)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
