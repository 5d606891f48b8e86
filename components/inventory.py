"""The on-prem GPU host inventory: each SSH host registered as a Pulumi resource.

Why a dynamic resource: an SSH-reached GPU box has no cloud API, but the platform still has
to know it exists, that its host key is the one recorded, how many GPUs it really has, and
that the runner's remote root is prepared. Registration does exactly that at ``pulumi up``
through the runner's own SSH code (``hmlkit.ssh.hosts.probe_host``: paramiko with verified
host keys, never AutoAddPolicy), so the inventory and ``hml`` can never disagree about how
a host is reached; the host's own model is the runner's ``SshHost`` too. The probed facts
(GPU count and names, the prepared root) are the resource's outputs and flow into the runner
profile.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from hmlkit.ssh.hosts import SshHost

PROBED = ("gpus", "gpu_names", "remote_root")
"""Outputs the probe sets; everything else is the inputs."""


class GpuHostProvider(ResourceProvider):
    """Probes the host over SSH on create and update; deleting only forgets it."""

    def _probe(self, props: dict[str, Any]) -> dict[str, Any]:
        from hmlkit.ssh.hosts import probe_host  # loaded in the provider process, when run

        facts = probe_host(props["host"], props["known_hosts"], props["remote_root"])
        return {**props, **{k: facts[k] for k in PROBED}}

    def create(self, props: dict[str, Any]) -> CreateResult:
        host = SshHost.model_validate(props["host"])
        return CreateResult(id_=host.label, outs=self._probe(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k, v in news.items() if k not in PROBED and olds.get(k) != v]
        moved = any(olds.get("host", {}).get(k) != news["host"].get(k) for k in ("address", "port", "user"))
        return DiffResult(
            changes=bool(changed), replaces=["host"] if moved else [], delete_before_replace=False
        )

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._probe(news))


class GpuHost(pulumi.dynamic.Resource):
    """A registered SSH GPU host. Outputs: ``host`` (the inputs), and the probed ``gpus``,
    ``gpu_names`` and ``remote_root``."""

    host: pulumi.Output[dict[str, Any]]
    gpus: pulumi.Output[int]
    gpu_names: pulumi.Output[list[str]]
    remote_root: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        host: SshHost,
        known_hosts: str,
        remote_root: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "host": host.model_dump(exclude_none=True),
            "known_hosts": known_hosts,
            "remote_root": remote_root,
            "gpus": host.gpus,
            "gpu_names": None,
        }
        super().__init__(GpuHostProvider(), name, props, opts)

    def profile_entry(self) -> pulumi.Output[dict[str, Any]]:
        """This host as the runner profile lists it (``targets.<name>.hosts[]``), with the
        GPU count the probe found (before the first ``up``: the configured count, if any)."""
        return pulumi.Output.all(self.host, self.gpus).apply(
            lambda v: {**v[0], **({"gpus": v[1]} if v[1] is not None else {})}
        )
