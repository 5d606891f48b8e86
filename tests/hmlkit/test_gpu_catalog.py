"""The GPU family table: what it answers, and that the pool and the policy rules both obey it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.gpu_pool import LAUNCHABLE_FAMILIES
from hmlkit.gpu_catalog import GPU_FAMILIES, families, family_of, gpu_family, is_gpu_instance_type
from policies.registry import all_rules
from policies.rules.compute import LAUNCH_TEMPLATE, is_gpu_capacity


@pytest.mark.parametrize(
    "instance_type, gpu, memory",
    [
        ("g4dn.xlarge", "T4", 16),
        ("g5.48xlarge", "A10G", 24),
        ("G6E.2XLARGE", "L40S", 48),
        ("p3dn.24xlarge", "V100", 32),
        ("p4de.24xlarge", "A100", 80),
        ("p5en.48xlarge", "H200", 141),
    ],
)
def test_instance_types_map_to_their_gpu(instance_type, gpu, memory):
    found = gpu_family(instance_type)
    assert (found.gpu, found.memory_gib) == (gpu, memory)
    assert is_gpu_instance_type(instance_type)


@pytest.mark.parametrize("value", ["m5.large", "g5", "p4d", "", None, 5, "c7g.xlarge"])
def test_other_values_are_not_gpu_types(value):
    assert gpu_family(value) is None and not is_gpu_instance_type(value)


def test_family_of_is_the_lower_case_prefix():
    assert family_of("P4D.24xlarge") == "p4d"
    assert family_of("gr6.4xlarge") == "gr6"


def test_families_filter_by_vendor_and_architecture():
    assert families(vendor="amd") == ["g4ad"]
    assert families(arch="arm64") == ["g5g"]
    assert set(families()) == set(GPU_FAMILIES)
    assert LAUNCHABLE_FAMILIES == sorted(set(GPU_FAMILIES) - {"g4ad", "g5g"})


def test_every_family_the_pool_launches_is_gpu_capacity_to_the_rules():
    judged = {
        f: is_gpu_capacity(LAUNCH_TEMPLATE, {"instanceType": f"{f}.xlarge"}) for f in LAUNCHABLE_FAMILIES
    }
    assert all(judged.values()), judged


def test_the_allow_list_rule_names_only_known_families():
    (rule,) = [r for r in all_rules() if r.id == "gpu-instance-types-allowed"]
    schema = rule.config["allowedFamilies"]
    assert set(schema["default"]) <= set(GPU_FAMILIES)
    assert schema["items"]["enum"] == sorted(GPU_FAMILIES)


def test_the_table_imports_no_product_package():
    code = (
        "import sys, hmlkit.gpu_catalog; print(sorted({m.split('.')[0] for m in sys.modules"
        " if m.split('.')[0] in ('runners', 'components', 'policies', 'pydantic', 'pulumi')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]"
