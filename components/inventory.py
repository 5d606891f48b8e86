"""The on-prem GPU host inventory: each SSH host registered as a Pulumi resource.

Why a dynamic resource: an SSH-reached GPU box has no cloud API, but the platform still has
to know it exists, that its host key is the one recorded, how many GPUs it really has, and
that the runner's remote root is prepared. Registration does exactly that at ``pulumi up``
through the runner's own SSH code (``runners.sshhost.probe_host``: paramiko with verified
host keys, never AutoAddPolicy), so the inventory and ``hml`` can never disagree about how
a host is reached. The probed facts (GPU count and names) are the resource's outputs and
flow into the runner profile.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult
from pydantic import Field

from components.base import Args

CONNECTION_KEYS = ("address", "port", "user")
"""Inputs that identify the machine: changing one registers a different host."""


class SshHost(Args):
    """One SSH GPU host, in the runner profile's ``hosts`` shape."""

    address: str
    port: int = Field(22, ge=1, le=65535)
    user: str = "hml"
    identity_file: str = "~/.ssh/id_ed25519"
    gpus: int = Field(0, ge=0)
    """Expected GPU count; the probe's count replaces it once registered."""
    labels: dict[str, str] = Field(default_factory=dict)


class GpuHostProvider(ResourceProvider):
    """Probes the host over SSH on create and update; deleting only forgets it."""

    def _probe(self, props: dict[str, Any]) -> dict[str, Any]:
        from runners.sshhost import probe_host  # the runner's SSH code; imported when run

        host = {k: props[k] for k in SshHost.model_fields if k in props}
        facts = probe_host(host, props["known_hosts"], props["remote_root"])
        return {**props, **facts}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._probe(props)
        return CreateResult(id_=f"{props['user']}@{props['address']}:{props['port']}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k, v in news.items() if olds.get(k) != v]
        return DiffResult(changes=bool(changed),
                          replaces=[k for k in changed if k in CONNECTION_KEYS],
                          delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._probe(news))


class GpuHost(pulumi.dynamic.Resource):
    """A registered SSH GPU host. Outputs: the host's inputs plus ``gpus``, ``gpu_names``."""

    address: pulumi.Output[str]
    port: pulumi.Output[int]
    user: pulumi.Output[str]
    identity_file: pulumi.Output[str]
    gpus: pulumi.Output[int]
    gpu_names: pulumi.Output[list[str]]
    labels: pulumi.Output[dict[str, str]]
    remote_root: pulumi.Output[str]

    def __init__(self, name: str, host: SshHost, known_hosts: str, remote_root: str,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        props = {**host.model_dump(), "known_hosts": known_hosts, "remote_root": remote_root,
                 "gpu_names": None}
        super().__init__(GpuHostProvider(), name, props, opts)

    def profile_entry(self) -> pulumi.Output[dict[str, Any]]:
        """This host as the runner profile lists it (``targets.onprem.hosts[]``)."""
        return pulumi.Output.all(self.address, self.port, self.user, self.identity_file,
                                 self.gpus, self.labels).apply(
            lambda v: dict(zip(("address", "port", "user", "identity_file", "gpus", "labels"),
                               v, strict=True)))
