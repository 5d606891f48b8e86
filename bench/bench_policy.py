"""How long ``hml policy check`` takes offline, for the hybrid stack and for 10x its resources.

Why: the check runs on every infrastructure pull request, once per stack; it must stay fast
as the platform grows. The scaled stack multiplies the hybrid stack's buckets and GPU pools
(``bench_stacks.scaled_config``) until it registers at least ten times the resources, and both
are measured in the same run so machine speed cancels out of the ratio. The time splits into
running the program under mocks and applying the 27 rules.

Run: ``.venv/bin/python bench/bench_policy.py [--repeat 5] [--resources 10]``
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from bench_stacks import PROJECT, scaled_config

from policies.evaluate import evaluate
from policies.offline import run_project
from policies.report import Report

STACK = "hybrid"


def median_report(config: dict[str, Any] | None, repeat: int) -> tuple[float, float, Report]:
    """Median program and rules seconds of ``repeat`` checks (after one warm-up)."""
    evaluate(PROJECT, STACK, config=config)  # warm-up: imports, provider SDK classes
    reports = [evaluate(PROJECT, STACK, config=config) for _ in range(repeat)]
    return (
        statistics.median(r.program_seconds for r in reports),
        statistics.median(r.rules_seconds for r in reports),
        reports[-1],
    )


def scaled_to(target: float, base_count: int) -> tuple[int, dict[str, Any], int]:
    """The smallest factor whose scaled config registers ``target`` x the resources."""
    factor = int(target)
    while True:
        config = scaled_config(STACK, factor)
        count = len(run_project(PROJECT, STACK, config=config).resources)
        if count >= target * base_count:
            return factor, config, count
        factor += 1


def measure(label: str, config: dict[str, Any] | None, repeat: int) -> tuple[float, int]:
    program, rules, report = median_report(config, repeat)
    print(
        f"  {label:24s} check {(program + rules) * 1000:8.1f} ms  (program under mocks "
        f"{program * 1000:7.1f} ms, rules {rules * 1000:6.1f} ms)  "
        f"{report.resource_count:4d} resources, {len(report.findings)} violations"
    )
    return program + rules, report.resource_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--resources",
        type=float,
        default=10.0,
        help="how many times the hybrid stack's resources to scale to",
    )
    args = parser.parse_args()

    print(f"offline policy check of stacks/platform, median of {args.repeat} runs")
    base_s, base_n = measure(STACK, None, args.repeat)
    factor, config, _ = scaled_to(args.resources, base_n)
    big_s, big_n = measure(f"{STACK} x{factor} pools+buckets", config, args.repeat)
    print(
        f"  ratio: time x{big_s / base_s:.2f} for resources x{big_n / base_n:.2f} "
        f"(per resource x{(big_s / big_n) / (base_s / base_n):.2f})"
    )


if __name__ == "__main__":
    main()
