"""`pulumi up` of the on-prem stack against real sshd hosts, then `hml` reads the profile.

The engine is Pulumi's mocks, except that Python dynamic resources are created the way the
engine's dynamic-provider process creates them (unpickle the provider, call ``create``), so
the GPU host inventory really connects, probes and prepares each host, and the exported
runner profile carries what the probe found.
"""

from __future__ import annotations

import base64
import json

import dill
import pulumi
from pulumi.runtime import rpc

from policies.offline import OfflineMocks, run_project
from runners.profile import load_profile
from tests.sshbed import SshBed, ssh_bed  # noqa: F401 - the fixture
from tests.stacks.examples import PROJECT, SECRETS

DYNAMIC = "pulumi-python:dynamic:Resource"


class CreatingDynamicResources(OfflineMocks):
    """Mocks that run Python dynamic providers' ``create``, as ``pulumi up`` would."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        if args.typ != DYNAMIC:
            return super().new_resource(args)
        props = dict(args.inputs)
        pickled = props.pop("__provider")  # the engine's wire form: a secret
        provider = dill.loads(base64.b64decode(rpc.unwrap_rpc_secret(pickled)))
        created = provider.create(props)
        return created.id, {**created.outs, "__provider": pickled}


def test_up_registers_the_hosts_and_the_profile_reaches_them(
    ssh_bed: SshBed,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(ssh_bed.known_hosts_text())
    root = tmp_path / "remote-root"
    hosts = [
        {"address": h.address, "port": h.port, "user": h.user, "identity_file": str(h.identity_file)}
        for h in ssh_bed.hosts
    ]
    onprem = {
        "kube_context": "lab",
        "s3_endpoint": "https://minio.lab:9000",
        "cold_storage_class": "COLD",
        "known_hosts": str(known_hosts),
        "remote_root": str(root),
        "pools": {"onprem": {"hosts": hosts}},
    }
    result = run_project(
        PROJECT,
        "onprem",
        config={"platform:onprem": onprem},
        secrets=SECRETS,
        mocks=CreatingDynamicResources(),
    )

    registered = result.by_type(DYNAMIC)
    assert sorted(r.id for r in registered) == sorted(f"{h.user}@{h.address}:{h.port}" for h in ssh_bed.hosts)
    assert all(r.outputs["gpu_names"] == [] for r in registered)  # no GPUs on this machine
    assert {p.name for p in root.iterdir()} == {"code", "blobs", "runs"}

    profile = result.outputs["runnerProfile"]
    target = profile["targets"]["onprem"]
    assert [h["gpus"] for h in target["hosts"]] == [0, 0]  # probed, not configured
    assert target["known_hosts"] == str(known_hosts)

    # `pulumi stack output --json runnerProfile > hybridml.yaml`, then hml loads it.
    profile_file = tmp_path / "hybridml.yaml"
    profile_file.write_text(json.dumps(profile))
    loaded = load_profile(str(profile_file))
    assert loaded.pick(None) == "onprem"
    assert loaded.tracking_uri == "https://mlflow.lab.example.com"
