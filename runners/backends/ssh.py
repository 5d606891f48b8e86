"""The ssh target: the company's own GPU hosts, reached with paramiko.

Code is staged content-addressed, the job runs detached under its own session on each host
(pid and exit-code files beside its log), GPUs are claimed under a host-wide lock, and a
multi-node job gets torchrun's rendezvous in every node's environment.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from runners import jobscript
from runners.backends import ssh_scripts as scripts
from runners.backends.base import Backend, Handle, JobState, LaunchRequest, TargetConfig, Usage
from runners.errors import BackendError, HostKeyError, NoCapacityError, UsageError
from runners.spec import JobSpec
from runners.sshhost import SshHost, connect, run, trust

_PY_SCRIPT = re.compile(r"^\s*(\S*python3?(?:\.\d+)?)\s+(?!-)(\S+\.py)(.*)$")


class SshConfig(TargetConfig):
    kind: Literal["ssh"] = "ssh"
    hosts: list[SshHost] = Field(min_length=1)
    known_hosts: str = "~/.hybridml/known_hosts"
    remote_root: str = ".hybridml"
    """Where code, runs and GPU claims live on each host; relative paths are under the login home."""
    gpu_hour_usd: float = Field(default=0.0, ge=0)
    max_workdir_mb: float = Field(default=100.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)

    @field_validator("remote_root")
    @classmethod
    def _root(cls, value: str) -> str:
        return value[2:] if value.startswith("~/") else value


def torchrun_line(run_text: str, distributed: bool) -> str:
    """A distributed job's ``python SCRIPT ARGS`` runs under torchrun with the rendezvous."""
    lines = run_text.strip().splitlines()
    match = _PY_SCRIPT.match(lines[0]) if distributed and len(lines) == 1 else None
    if not match:
        return run_text
    python, script, args = match.groups()
    return (
        f'{python} -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE" '
        f'--node-rank="$NODE_RANK" --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" '
        f"--tee 3 {script}{args}"
    )


class SshBackend(Backend):
    kind = "ssh"
    Config = SshConfig
    poll_interval = 1.0
    config: SshConfig

    def __init__(self, name: str, config: SshConfig) -> None:
        super().__init__(name, config)
        self._clients: dict[str, Any] = {}
        self._roots: dict[str, str] = {}

    # -- connections ------------------------------------------------------------
    def _client(self, host: SshHost) -> Any:
        client = self._clients.get(host.label)
        transport = client.get_transport() if client else None
        if client is None or transport is None or not transport.is_active():
            client = connect(host, self.config.known_hosts, self.config.connect_timeout, self.name)
            self._clients[host.label] = client
        return client

    def _exec(
        self, host: SshHost, command: str, timeout: float = 30.0, text: bool = True
    ) -> tuple[int, Any, str]:
        client = self._client(host)
        try:
            return run(client, command, timeout, text=text)
        except BackendError as exc:
            self._clients.pop(host.label, None)
            client.close()
            raise BackendError(f"{host.label}: {exc}") from None

    def _root(self, host: SshHost) -> str:
        if host.label not in self._roots:
            root = host.remote_root or self.config.remote_root
            rc, out, err = self._exec(host, f"mkdir -p {_q(root)} && cd {_q(root)} && pwd")
            if rc != 0:
                raise BackendError(f"{host.label}: cannot create remote_root {root}: {err.strip()}")
            self._roots[host.label] = out.strip()
        return self._roots[host.label]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- placement --------------------------------------------------------------
    def _placement(self, nodes: int, gpus: int) -> list[SshHost]:
        fits, notes = [], []
        for host in self.config.hosts:
            try:
                rc, out, _ = self._exec(host, scripts.probe(self._root(host), host.gpus))
            except BackendError as exc:
                notes.append(str(exc))
                continue
            total, free = (int(x) for x in out.split()[1::2]) if rc == 0 else (0, 0)
            if free >= gpus:
                fits.append((free, host))
            else:
                notes.append(f"{host.label}: {free} of {total} GPU(s) free")
        if len(fits) < nodes:
            raise NoCapacityError(
                f"target {self.name!r}: the job needs {nodes} host(s) with {gpus} free GPU(s) each, "
                f"{len(fits)} fit now ({'; '.join(notes) or 'no hosts'})"
            )
        fits.sort(key=lambda f: -f[0])  # most free GPUs first; stable keeps the profile's order
        return [host for _, host in fits[:nodes]]

    # -- the protocol -----------------------------------------------------------
    def preflight(self, spec: JobSpec, workdir: Path) -> None:
        """Host keys verified, hosts reached (all at once: one time-out, not one per host), and a
        job no host could ever hold refused with what the hosts have."""
        from concurrent.futures import ThreadPoolExecutor

        from runners.staging import scan

        scan(workdir, int(self.config.max_workdir_mb * 1e6))
        hosts = self.config.hosts
        if spec.num_nodes > len(hosts):
            raise UsageError(
                f"target {self.name!r} can never run this job: num_nodes is {spec.num_nodes}, "
                f"it has {len(hosts)} host(s)"
            )

        def total_gpus(host: SshHost) -> int | BackendError:
            try:
                rc, out, _ = self._exec(host, scripts.probe(self._root(host), host.gpus))
            except HostKeyError:
                raise
            except BackendError as exc:
                return exc
            return int(out.split()[1]) if rc == 0 and out.startswith("TOTAL") else 0

        with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
            totals = list(pool.map(total_gpus, hosts))
        unreachable = [str(t) for t in totals if isinstance(t, BackendError)]
        if len(unreachable) == len(hosts):
            raise BackendError(f"no host reachable: {'; '.join(unreachable)}")
        want = spec.resources.gpus
        # an unreachable host counts as able when its configured count allows it
        able = [
            h
            for h, t in zip(hosts, totals, strict=True)
            if (t >= want if isinstance(t, int) else h.gpus is None or h.gpus >= want)
        ]
        if len(able) < spec.num_nodes:
            have = ", ".join(
                f"{h.label}: {t if isinstance(t, int) else 'unreachable'}"
                for h, t in zip(hosts, totals, strict=True)
            )
            raise UsageError(
                f"target {self.name!r} can never run this job: it needs {spec.num_nodes} host(s) "
                f"with {want} GPU(s) each; GPUs per host: {have}"
            )

    def launch(self, request: LaunchRequest) -> tuple[Handle, Usage]:
        from runners.staging import scan

        spec = request.spec
        gpus = spec.resources.gpus
        manifest = scan(request.workdir, int(self.config.max_workdir_mb * 1e6))
        hosts = self._placement(spec.num_nodes, gpus)
        distributed = spec.num_nodes > 1 or gpus > 1
        rendezvous = {
            "MASTER_ADDR": hosts[0].address,
            "MASTER_PORT": str(random.randint(20000, 45000)),
            "NNODES": str(spec.num_nodes),
            "NPROC_PER_NODE": str(max(gpus, 1)),
            "HML_NUM_NODES": str(spec.num_nodes),
            "HML_NODE_IPS": ",".join(h.address for h in hosts),
            "HML_GPUS_PER_NODE": str(gpus),
        }
        handle: Handle = {"nodes": [], "cursor": {}, "partial": {}}
        try:
            for rank, host in enumerate(hosts):
                self._start_node(handle, request, host, rank, manifest, rendezvous, distributed)
        except BaseException:
            self.cancel(handle)
            raise
        usage = Usage(
            nodes=spec.num_nodes,
            gpus_per_node=gpus,
            gpu_hour_usd=self.config.gpu_hour_usd,
            hosts=[h.label for h in hosts],
        )
        return handle, usage

    def _start_node(
        self,
        handle: Handle,
        request: LaunchRequest,
        host: SshHost,
        rank: int,
        manifest: Any,
        rendezvous: dict[str, str],
        distributed: bool,
    ) -> None:
        """Stage, write the node's files, claim GPUs and start; the node joins ``handle`` first so
        a failure half-way can still be cancelled."""
        from runners.staging import stage

        root = self._root(host)
        client = self._client(host)
        staged = stage(client, manifest, request.workdir, root)
        exec_dir = f"{root}/runs/{request.run_id}/attempt-{request.attempt}/node-{rank}"
        self._exec(host, f"umask 077 && mkdir -p {_q(exec_dir)}")  # private to the login
        node = {
            "host": host.model_dump(),
            "rank": rank,
            "exec_dir": exec_dir,
            "bytes_staged": staged.bytes_sent,
        }
        handle["nodes"].append(node)
        run_text = torchrun_line(request.spec.run, distributed)
        files = jobscript.render(
            exec_dir, staged.code_dir, request.spec.setup, run_text, request.run_id, list(request.secrets)
        )
        env = {
            **request.env,
            **rendezvous,
            "NODE_RANK": str(rank),
            "HML_NODE_RANK": str(rank),
            "HML_CODE_DIR": staged.code_dir,
        }
        sftp = client.open_sftp()
        try:
            for name, text in files.items():
                with sftp.open(f"{exec_dir}/{name}", "w") as fh:
                    fh.chmod(0o600)
                    fh.write(text)
            with sftp.open(f"{exec_dir}/{jobscript.ENV_FILE}", "w") as fh:
                fh.chmod(0o600)
                fh.write(jobscript.env_lines({**env, **request.secrets}))
        finally:
            sftp.close()
        rc, out, err = self._exec(
            host, scripts.launch(root, exec_dir, request.spec.resources.gpus, host.gpus)
        )
        if out.startswith("NOCAPACITY"):
            raise NoCapacityError(f"{host.label}: its GPUs were taken meanwhile ({out.strip()})")
        if rc != 0 or not out.startswith("STARTED"):
            raise BackendError(f"{host.label}: job did not start: {(err or out).strip()[-300:]}")
        node["gpus"] = out.split()[1] if len(out.split()) > 1 else ""

    def _nodes(self, handle: Handle) -> list[tuple[SshHost, dict[str, Any]]]:
        return [(SshHost.model_validate(n["host"]), n) for n in handle["nodes"]]

    def poll(self, handle: Handle) -> JobState:
        exits: dict[int, int] = {}
        for host, node in self._nodes(handle):
            _, out, _ = self._exec(host, scripts.state(node["exec_dir"]), timeout=15)
            word, _, code = out.strip().partition(" ")
            if word == "GONE":
                self.cancel(handle)
                return JobState(False, None, f"node {node['rank']} on {host.label}: process vanished")
            if word == "EXIT":
                exits[node["rank"]] = int(code or 1)
        failed = {r: c for r, c in exits.items() if c != 0}
        if failed:
            rank, code = min(failed.items())
            if len(exits) < len(handle["nodes"]):
                self.cancel(handle)  # one node failed: stop the others rather than let them hang
            return JobState(
                False, code, f"node {rank} exited with {code}" if len(handle["nodes"]) > 1 else ""
            )
        if len(exits) == len(handle["nodes"]):
            return JobState(False, 0)
        return JobState(True)

    def read_output(self, handle: Handle) -> bytes:
        chunks = []
        multi = len(handle["nodes"]) > 1
        for host, node in self._nodes(handle):
            key = str(node["rank"])
            offset = handle["cursor"].get(key, 0)
            _, data, _ = self._exec(host, scripts.output(node["exec_dir"], offset), timeout=15, text=False)
            handle["cursor"][key] = offset + len(data)
            if not multi:
                chunks.append(data)
                continue
            text = handle["partial"].get(key, "") + data.decode("utf-8", errors="replace")
            complete, _, handle["partial"][key] = text.rpartition("\n")
            if complete:
                chunks.append("".join(f"[node {key}] {ln}\n" for ln in complete.split("\n")).encode())
        return b"".join(chunks)

    def cancel(self, handle: Handle) -> None:
        problems = []
        for host, node in self._nodes(handle):
            try:
                self._exec(host, scripts.kill(node["exec_dir"]), timeout=30)
            except BackendError as exc:
                problems.append(str(exc))
        if problems and len(problems) == len(handle["nodes"]):
            raise BackendError("; ".join(problems))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "hosts": [h.label for h in self.config.hosts]}

    def trust(self, confirm: Callable[[list[tuple[str, str, str]]], bool]) -> list[tuple[str, str, str]]:
        return trust(self.config.hosts, self.config.known_hosts, confirm)


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)
