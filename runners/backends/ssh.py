"""The ssh target: the company's own GPU hosts, reached over the SSH layer (``hmlkit.ssh``).

This backend only decides where: it places the job on hosts with free GPUs (a hint; the
claim under each host's lock decides) and refuses what no host could ever hold. Running the
job on those hosts is ``NodeRunner``'s, shared with every target that reaches hosts by SSH.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hmlkit.errors import BackendError, HmlError, HostKeyError, NoCapacityError, UsageError
from hmlkit.profile import SshTarget
from hmlkit.ssh import preflight, scripts
from hmlkit.ssh.hosts import SshHost, trust
from hmlkit.ssh.pool import HostPool
from runners.backends.base import Backend, JobState, LaunchRequest, Usage
from runners.backends.nodes import NodeRunner, NodesHandle, known_hosts
from runners.spec import JobSpec


class SshBackend(Backend[NodesHandle]):
    kind = "ssh"
    Config = SshTarget
    handle_type = NodesHandle
    config: SshTarget

    def __init__(self, name: str, config: SshTarget) -> None:
        super().__init__(name, config)
        self.pool = HostPool(known_hosts(config), config.connect_timeout, name, config.remote_root)
        self.nodes = NodeRunner(
            self.pool,
            int(config.max_workdir_mb * 1e6),
            config.data_via,
            config.tracking_via,
            env_via=config.env_via,
        )

    def close(self) -> None:
        self.pool.close()

    def commands_sent(self) -> int:
        return self.pool.commands

    def _gpus(self, host: SshHost, want: int = 0) -> tuple[int, int] | HmlError:
        """The host's (total, free) GPUs by the claims; else why it could not be asked
        (BackendError) or what it lacks for a job of ``want`` GPUs (UsageError, hmlkit/ssh/preflight.py)."""
        try:
            root = self.pool.root(host)
            rc, out, _ = self.pool.exec(host, scripts.probe(root, host.gpus) + preflight.script(host.python))
        except (BackendError, UsageError) as exc:
            return exc
        lacks = preflight.problems(host, root, out, want)
        if lacks:
            return UsageError("; ".join(lacks))
        first = out.splitlines()[0] if out.strip() else ""
        total, free = (
            (int(x) for x in first.split()[1::2]) if rc == 0 and first.startswith("TOTAL") else (0, 0)
        )
        return total, free

    def _placement(self, nodes: int, gpus: int) -> list[SshHost]:
        fits, notes = [], []
        for host in self.config.hosts:
            found = self._gpus(host, gpus)
            if isinstance(found, HmlError):
                notes.append(str(found))
            elif found[1] >= gpus:
                fits.append((found[1], host))
            else:
                notes.append(f"{host.label}: {found[1]} of {found[0]} GPU(s) free")
        if len(fits) < nodes:
            raise NoCapacityError(
                f"target {self.name!r}: the job needs {nodes} host(s) with {gpus} free GPU(s) each, "
                f"{len(fits)} fit now ({'; '.join(notes) or 'no hosts'})"
            )
        fits.sort(key=lambda f: -f[0])  # most free GPUs first; stable keeps the profile's order
        return [host for _, host in fits[:nodes]]

    def preflight(self, spec: JobSpec, workdir: Path) -> None:
        """Host keys verified, hosts reached (all at once: one time-out, not one per host), each
        host's lacks found (hmlkit/ssh/preflight.py), and a job no host could ever hold refused
        with what the hosts have and what they lack."""
        from concurrent.futures import ThreadPoolExecutor

        from hmlkit.ssh.staging import scan

        scan(workdir, self.nodes.max_workdir_bytes)
        hosts = self.config.hosts
        if spec.num_nodes > len(hosts):
            raise UsageError(
                f"target {self.name!r} can never run this job: num_nodes is {spec.num_nodes}, "
                f"it has {len(hosts)} host(s)"
            )
        want = spec.resources.gpus
        with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
            found = list(pool.map(lambda h: self._gpus(h, want), hosts))
        keys = [f for f in found if isinstance(f, HostKeyError)]
        if keys:
            raise keys[0]  # an unknown or changed host key goes to the user, never around it
        lacking = [str(f) for f in found if isinstance(f, UsageError)]
        unreachable = [str(f) for f in found if isinstance(f, BackendError)]
        if len(unreachable) == len(hosts):
            raise BackendError(f"no host reachable: {'; '.join(unreachable)}")
        # an unreachable host counts as able when its configured count allows it
        able = [
            h
            for h, f in zip(hosts, found, strict=True)
            if not isinstance(f, UsageError)
            and (f[0] >= want if isinstance(f, tuple) else h.gpus is None or h.gpus >= want)
        ]
        if len(able) < spec.num_nodes and lacking:
            raise UsageError(
                f"target {self.name!r} cannot run this job: it needs {spec.num_nodes} host(s), "
                f"{len(able)} can; {'; '.join(lacking)}"
            )
        if len(able) < spec.num_nodes:
            have = ", ".join(
                f"{h.label}: {f[0] if isinstance(f, tuple) else 'unreachable'}"
                for h, f in zip(hosts, found, strict=True)
            )
            raise UsageError(
                f"target {self.name!r} can never run this job: it needs {spec.num_nodes} host(s) "
                f"with {want} GPU(s) each; GPUs per host: {have}"
            )

    def room(self, spec: JobSpec) -> str | None:
        try:
            self._placement(spec.num_nodes, spec.resources.gpus)
        except NoCapacityError as exc:
            return str(exc)
        return None

    def launch(self, request: LaunchRequest) -> tuple[NodesHandle, Usage]:
        spec = request.spec
        hosts = self._placement(spec.num_nodes, spec.resources.gpus)
        handle = self.nodes.start(request, hosts)
        usage = Usage(
            nodes=spec.num_nodes,
            gpus_per_node=spec.resources.gpus,
            gpu_hour_usd=self.config.gpu_hour_usd,
            hosts=[h.label for h in hosts],
            data_bytes=handle.data_bytes(),
            data_streamed=handle.data_streamed(),
        )
        return handle, usage

    def poll(self, handle: NodesHandle) -> JobState:
        return self.nodes.poll(handle)

    def read_output(self, handle: NodesHandle) -> bytes:
        return self.nodes.read_output(handle)

    def wait(self, handle: NodesHandle, seconds: float) -> None:
        self.nodes.wait(handle, seconds)

    def cancel(self, handle: NodesHandle) -> None:
        self.nodes.cancel(handle)

    def teardown(self, handle: NodesHandle) -> None:
        self.nodes.release(handle)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "hosts": [h.label for h in self.config.hosts]}

    def trust(self, confirm: Callable[[list[tuple[str, str, str]]], bool]) -> list[tuple[str, str, str]]:
        return trust(self.config.hosts, known_hosts(self.config), confirm)
