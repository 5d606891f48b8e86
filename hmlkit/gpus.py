"""GPU discovery shared by every target that reaches a machine's shell."""

from __future__ import annotations

QUERY = "nvidia-smi --query-gpu=index,name --format=csv,noheader"


def parse(output: str) -> list[str]:
    """GPU names from ``nvidia-smi`` CSV output, in index order."""
    names = []
    for line in output.splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            names.append(name.strip())
    return names


def local_gpus() -> list[str]:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(QUERY.split(), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse(out.stdout) if out.returncode == 0 else []
