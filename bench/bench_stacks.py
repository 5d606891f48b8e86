"""How long the platform stack program takes to evaluate, and how that grows with scale.

Why: every PR runs the policy pack over each example stack under Pulumi's mocks, and the
platform grows by buckets and GPU pools; this measures each example stack's evaluation
time, then the hybrid stack with 10x the buckets and node pools, against a baseline taken
in the same run (so machine speed cancels out of the ratio).

Run: ``.venv/bin/python bench/bench_stacks.py [--repeat 5] [--scale 10]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from policies.offline import ProgramResult, load_stack_config, run_project

PROJECT = Path(__file__).resolve().parents[1] / "stacks" / "platform"
STACKS = ("onprem", "aws-dev", "hybrid")


def measure(stack: str, repeat: int, config: dict[str, Any] | None = None) -> tuple[float, ProgramResult]:
    """Median seconds of ``repeat`` evaluations (after one warm-up), and the last result."""
    result = run_project(PROJECT, stack, config=config)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = run_project(PROJECT, stack, config=config)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def scaled_config(stack: str, factor: int) -> dict[str, Any]:
    """The stack's config with ``factor`` times its buckets and GPU pools."""
    values = load_stack_config(PROJECT, stack).values
    storage = values["platform:storage"]
    buckets = {
        f"{name}-{i}" if i else name: spec for i in range(factor) for name, spec in storage["buckets"].items()
    }
    config: dict[str, Any] = {"platform:storage": {**storage, "buckets": buckets}}
    for section in ("platform:aws", "platform:onprem"):
        if section in values:
            pools = values[section]["pools"]
            config[section] = {
                **values[section],
                "pools": {
                    f"{name}-{i}" if i else name: spec for i in range(factor) for name, spec in pools.items()
                },
            }
    return config


def _count(result: ProgramResult) -> str:
    custom = sum(r.custom for r in result.resources)
    return f"{len(result.resources):4d} resources ({custom} custom)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, default=10)
    args = parser.parse_args()

    print(f"evaluation under Pulumi mocks, median of {args.repeat} runs")
    baseline: dict[str, tuple[float, ProgramResult]] = {}
    for stack in STACKS:
        baseline[stack] = measure(stack, args.repeat)
        seconds, result = baseline[stack]
        print(f"  {stack:8s} {seconds * 1000:8.1f} ms  {_count(result)}")

    stack = "hybrid"
    base_s, base_result = baseline[stack]
    big_s, big_result = measure(stack, args.repeat, scaled_config(stack, args.scale))
    grow = len(big_result.resources) / len(base_result.resources)
    print(f"\n{stack} with {args.scale}x buckets and GPU pools")
    print(f"  baseline {base_s * 1000:8.1f} ms  {_count(base_result)}")
    print(f"  scaled   {big_s * 1000:8.1f} ms  {_count(big_result)}")
    print(
        f"  ratio    time x{big_s / base_s:.2f}, resources x{grow:.2f}, "
        f"per resource x{(big_s / len(big_result.resources)) / (base_s / len(base_result.resources)):.2f}"
    )


if __name__ == "__main__":
    main()
