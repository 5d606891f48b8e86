"""The one table of AWS GPU instance families and the GPUs they carry.

Why one table: the GPU pool validates the instance types it is given, the compute policy
rules recognise GPU capacity in any stack, and the runner's AWS target chooses instances; if
each kept its own list they would disagree (they did: the pool took p4d and p5 while a rule
did not know them). A family AWS launches becomes known to all three by adding one row here.

Memory is per GPU in GiB, as AWS's instance-type pages state it. Standard library only: this
module sits below ``runners``, ``components`` and ``policies`` and imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class GpuFamily:
    """One EC2 instance family with GPUs: every size of it carries the same GPU model."""

    family: str
    gpu: str
    memory_gib: int
    vendor: Literal["nvidia", "amd"] = "nvidia"
    arch: Literal["x86_64", "arm64"] = "x86_64"


GPU_FAMILIES: dict[str, GpuFamily] = {
    f.family: f
    for f in (
        GpuFamily("g4dn", "T4", 16),
        GpuFamily("g4ad", "Radeon Pro V520", 8, vendor="amd"),
        GpuFamily("g5", "A10G", 24),
        GpuFamily("g5g", "T4G", 16, arch="arm64"),
        GpuFamily("g6", "L4", 24),
        GpuFamily("gr6", "L4", 24),
        GpuFamily("g6e", "L40S", 48),
        GpuFamily("p3", "V100", 16),
        GpuFamily("p3dn", "V100", 32),
        GpuFamily("p4d", "A100", 40),
        GpuFamily("p4de", "A100", 80),
        GpuFamily("p5", "H100", 80),
        GpuFamily("p5e", "H200", 141),
        GpuFamily("p5en", "H200", 141),
    )
}


def family_of(instance_type: str) -> str:
    """The family part of an EC2 instance type: ``g5.2xlarge`` -> ``g5`` (lower case)."""
    return instance_type.split(".", 1)[0].strip().lower()


def gpu_family(instance_type: object) -> GpuFamily | None:
    """The GPU family of an instance type, or None for a type without GPUs (or not a type).

    Takes any value because policy rules pass whatever a program set as the instance type.
    """
    if not isinstance(instance_type, str) or "." not in instance_type:
        return None
    return GPU_FAMILIES.get(family_of(instance_type))


def is_gpu_instance_type(instance_type: object) -> bool:
    return gpu_family(instance_type) is not None


def families(vendor: str | None = None, arch: str | None = None) -> list[str]:
    """The family names, sorted, optionally only those of one GPU vendor and CPU architecture."""
    return sorted(
        f.family for f in GPU_FAMILIES.values() if vendor in (None, f.vendor) and arch in (None, f.arch)
    )
