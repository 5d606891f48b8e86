"""GPU host inventory: registration against real sshd hosts, through the very provider
object Pulumi would ship to its dynamic-provider process."""

from __future__ import annotations

import base64
from pathlib import Path

import dill
import pytest

from components.inventory import GpuHost, GpuHostProvider
from hmlkit.errors import HostKeyError
from hmlkit.ssh.hosts import SshHost
from policies.offline import run_program
from tests.sshbed import SshBed


def _registered(host: dict, known_hosts: Path, remote_root: Path) -> tuple[dict, GpuHostProvider]:
    """The inputs the engine would receive for one GpuHost, and its unpickled provider."""
    result = run_program(lambda: GpuHost("h", SshHost(**host), str(known_hosts), str(remote_root)))
    (resource,) = result.by_type("pulumi-python:dynamic:Resource")
    props = dict(resource.inputs)
    # What pulumi's dynamic-provider process does with the "__provider" input.
    provider = dill.loads(base64.b64decode(props.pop("__provider")))
    return props, provider


@pytest.fixture
def known_hosts(ssh_bed: SshBed, tmp_path: Path) -> Path:  # noqa: F811 - fixture argument
    path = tmp_path / "known_hosts"
    path.write_text(ssh_bed.known_hosts_text())
    return path


def _host(bed: SshBed, index: int = 0) -> dict:
    host = bed.hosts[index]
    return {
        "address": host.address,
        "port": host.port,
        "user": host.user,
        "identity_file": str(host.identity_file),
        "labels": {"rack": "a"},
    }


def test_registration_probes_gpus_and_prepares_the_remote_root(
    ssh_bed,
    known_hosts,  # noqa: F811
    tmp_path,
):
    root = tmp_path / "hml-root"
    props, provider = _registered(_host(ssh_bed), known_hosts, root)
    created = provider.create(props)
    host = ssh_bed.hosts[0]
    assert created.id == f"{host.user}@{host.address}:{host.port}"
    assert created.outs["gpus"] == 0 and created.outs["gpu_names"] == []  # no nvidia-smi here
    assert created.outs["remote_root"] == str(root)
    assert sorted(p.name for p in root.iterdir()) == ["blobs", "code", "runs"]
    assert created.outs["host"]["labels"] == {"rack": "a"}


def test_unknown_host_key_is_refused(ssh_bed, tmp_path):  # noqa: F811
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    props, provider = _registered(_host(ssh_bed, 1), empty, tmp_path / "root")
    with pytest.raises(HostKeyError, match="host key not trusted"):
        provider.create(props)
    assert not (tmp_path / "root").exists()


def test_update_probes_again_and_moving_a_host_replaces_it(
    ssh_bed,
    known_hosts,  # noqa: F811
    tmp_path,
):
    root = tmp_path / "root"
    props, provider = _registered(_host(ssh_bed), known_hosts, root)
    olds = provider.create(props).outs
    relabelled = {**props, "host": {**props["host"], "labels": {"rack": "b"}}}
    diff = provider.diff("id", olds, relabelled)
    assert diff.changes and diff.replaces == []
    (root / "runs").rmdir()
    assert provider.update("id", olds, relabelled).outs["host"]["labels"] == {"rack": "b"}
    assert (root / "runs").is_dir()
    moved = {**props, "host": {**props["host"], "port": props["host"]["port"] + 1}}
    assert provider.diff("id", olds, moved).replaces == ["host"]
    assert not provider.diff("id", olds, props).changes
