"""Timing helpers shared by the benchmarks: medians of repeated wall-clock runs."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def wall(cmd: list[str], repeat: int = 5, **kw) -> float:
    """Median seconds of running ``cmd`` to completion."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, **kw)
        if out.returncode:
            raise RuntimeError(f"{cmd} exited {out.returncode}: {out.stderr[-2000:]}")
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def median_of(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def first_line_latency(cmd: list[str], expect: str, **kw) -> float:
    """Seconds from starting ``cmd`` until a line containing ``expect`` appears on its stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)
    assert proc.stdout is not None
    for line in proc.stdout:
        if expect in line:
            elapsed = time.perf_counter() - start
            break
    else:
        raise RuntimeError(f"{expect!r} never appeared from {cmd}")
    proc.wait()
    return elapsed


def plain_ssh(host: Any, known_hosts: Path) -> list[str]:
    """OpenSSH to a bed host (``tests.sshbed.Host``), host key checked: the benchmarks' baseline."""
    return [
        "ssh",
        "-i",
        str(host.identity_file),
        "-p",
        str(host.port),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        f"{host.user}@{host.address}",
    ]


def report(title: str, rows: list[tuple[str, float, float]]) -> None:
    """rows: (what, seconds, baseline seconds); prints each with its ratio."""
    print(f"\n## {title}")
    print(f"{'measure':58} {'seconds':>9} {'baseline':>9} {'ratio':>8}")
    for name, value, base in rows:
        print(f"{name:58} {value:9.3f} {base:9.3f} {value / base:8.1f}x")
