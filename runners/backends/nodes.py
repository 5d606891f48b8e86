"""Running one attempt of a job on a set of reachable hosts: the piece every shell target shares.

The ssh target picks hosts from its inventory; a cloud target launches instances; a Slurm
target gets an allocation. Each then hands the hosts to ``NodeRunner``, which stages the
workdir (content-addressed), writes the wrapper and environment, claims GPUs and starts the
job detached on every node with torchrun's rendezvous, follows their state and output,
cancels, and releases the claims. Retries and resume are the supervisor's: a retry is a new
attempt here, and the job finds its checkpoint in its workdir as before.
"""

from __future__ import annotations

import random
import re
import shlex
from typing import Any

from pydantic import BaseModel

from hmlkit.errors import BackendError, NoCapacityError
from hmlkit.node import jobscript
from hmlkit.profile import ShellTarget, TrackingVia
from hmlkit.ssh import scripts
from hmlkit.ssh.hosts import SshHost
from hmlkit.ssh.pool import HostPool
from hmlkit.ssh.shell import tar_feed, text_files
from hmlkit.ssh.stream import OutputStream
from hmlkit.ssh.stream import command as follow_command
from runners.backends.base import Handle, JobState, LaunchRequest
from runners.data.stage import Via, stage_remote
from runners.envs import ship
from runners.envs.lock import python_of
from runners.state.paths import home

_PY_SCRIPT = re.compile(r"^\s*(\S*python3?(?:\.\d+)?)\s+(?!-)(\S+\.py)(.*)$")


class Node(BaseModel):
    host: SshHost
    rank: int
    root: str
    exec_dir: str
    bytes_staged: int = 0
    data_bytes: int = 0
    """Input bytes this node fetched from the store or was sent over SSH."""
    data_streamed: int = 0
    """Of those, what the runner sent over SSH (the host could not reach the store)."""
    gpus: str = ""
    """The GPU indices claimed on the host (CUDA_VISIBLE_DEVICES)."""
    cursor: int = 0
    partial: str = ""
    """A line still being written, held until its end so node prefixes stay on whole lines."""
    forward: tuple[str, int] | None = None
    """(tracking URI, the host's port) the runner forwards while it follows (tracking_via: runner)."""


class NodesHandle(Handle):
    nodes: list[Node] = []

    def data_bytes(self) -> dict[str, int]:
        return {n.host.label: n.data_bytes for n in self.nodes}

    def data_streamed(self) -> dict[str, int]:
        return {n.host.label: n.data_streamed for n in self.nodes if n.data_streamed}


def known_hosts(config: ShellTarget) -> str:
    """The target's ``known_hosts``, else the one in ``$HML_HOME``: a second home (a test, a
    sandbox, another user's state) trusts its own hosts, not those of ``~/.hybridml``."""
    return config.known_hosts or str(home() / "known_hosts")


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


def _key(node: Node) -> str:
    return f"{node.host.label}:{node.exec_dir}"


class NodeRunner:
    def __init__(
        self,
        pool: HostPool,
        max_workdir_bytes: int,
        data_via: Via = "auto",
        tracking_via: TrackingVia = "direct",
        pids_on_host: bool = True,
        env_via: ship.EnvVia = "auto",
    ) -> None:
        """``pids_on_host``: the job runs on the hosts reached (not on a scheduler's compute nodes),
        so a node whose processes vanished without an exit code is seen as gone."""
        self.pool = pool
        self.max_workdir_bytes = max_workdir_bytes
        self.data_via = data_via
        self.tracking_via = tracking_via
        self.pids_on_host = pids_on_host
        self.env_via = env_via
        self._streams: dict[str, OutputStream] = {}
        self._unread: dict[str, bytes] = {}
        """Bytes a poll took from a node's channel that read_output has not handed on yet."""

    def start(self, request: LaunchRequest, hosts: list[SshHost]) -> NodesHandle:
        """Start the job on ``hosts`` (rank = position); on any failure, stop what started."""
        from hmlkit.ssh.staging import scan

        spec = request.spec
        gpus = spec.resources.gpus
        manifest = scan(request.workdir, self.max_workdir_bytes)
        distributed = len(hosts) > 1 or gpus > 1
        rendezvous = {
            "MASTER_ADDR": hosts[0].address,
            "MASTER_PORT": str(random.randint(20000, 45000)),
            "NNODES": str(len(hosts)),
            "NPROC_PER_NODE": str(max(gpus, 1)),
            "HML_NUM_NODES": str(len(hosts)),
            "HML_NODE_IPS": ",".join(h.address for h in hosts),
            "HML_GPUS_PER_NODE": str(gpus),
        }
        handle = NodesHandle()
        try:
            for rank, host in enumerate(hosts):
                self._start_node(handle, request, host, rank, manifest, rendezvous, distributed)
        except BaseException:
            self.cancel(handle)
            self.release(handle)
            raise
        return handle

    def _start_node(
        self,
        handle: NodesHandle,
        request: LaunchRequest,
        host: SshHost,
        rank: int,
        manifest: Any,
        rendezvous: dict[str, str],
        distributed: bool,
    ) -> None:
        """Stage, write the node's files, claim GPUs and start; the node joins ``handle`` first so
        a failure half-way can still be cancelled."""
        from hmlkit.ssh.staging import stage

        root = self.pool.root(host)
        staged = stage(self.pool.runner(host), manifest, request.workdir, root, host.python)
        exec_dir = f"{root}/runs/{request.run_id}/attempt-{request.attempt}/node-{rank}"
        self.pool.exec(host, f"umask 077 && mkdir -p {shlex.quote(exec_dir)}")  # private to the login
        node = Node(host=host, rank=rank, root=root, exec_dir=exec_dir, bytes_staged=staged.bytes_sent)
        handle.nodes.append(node)
        data = stage_remote(self.pool, host, root, exec_dir, list(request.inputs), self.data_via)
        node.data_bytes = data.fetched_bytes + data.streamed_bytes
        node.data_streamed = data.streamed_bytes
        shipped = ship.stage(self.pool, host, root, request.environment, self.env_via)
        run_text = torchrun_line(request.spec.run, distributed)
        files = jobscript.render(
            exec_dir,
            staged.code_dir,
            request.spec.setup,
            run_text,
            request.run_id,
            list(request.secrets),
            request.environment,
            python_of(request.environment or ""),
            f"{root}/envs",
        )
        env = {
            **request.env,
            **rendezvous,
            "NODE_RANK": str(rank),
            "HML_NODE_RANK": str(rank),
            "HML_CODE_DIR": staged.code_dir,
            jobscript.PYTHON: host.python,
            **data.env,
            **shipped.env,
            **self._tracking_upstream(node, request.env.get("MLFLOW_TRACKING_URI", "")),
        }
        files[jobscript.ENV_FILE] = jobscript.env_lines({**env, **request.secrets})
        rc, out, err = self.pool.exec(
            host,
            scripts.launch(root, exec_dir, request.spec.resources.gpus, host.gpus),
            stdin=tar_feed(text_files(files)),
        )
        if out.startswith("NOCAPACITY"):
            raise NoCapacityError(f"{host.label}: its GPUs were taken meanwhile ({out.strip()})")
        if rc != 0 or not out.startswith("STARTED"):
            raise BackendError(f"{host.label}: job did not start: {(err or out).strip()[-300:]}")
        node.gpus = out.split()[1] if len(out.split()) > 1 else ""

    def _tracking_upstream(self, node: Node, tracking_uri: str) -> dict[str, str]:
        """With tracking_via: runner, the node's relay goes upstream through a port forwarded
        over this runner's connection (hmlkit/ssh/forward.py)."""
        if self.tracking_via != "runner" or not tracking_uri.startswith(("http://", "https://")):
            return {}
        node.forward = (tracking_uri, self.pool.forward(node.host, tracking_uri))
        return {jobscript.RELAY_UPSTREAM: f"http://127.0.0.1:{node.forward[1]}"}

    def hold_forwards(self, handle: NodesHandle) -> None:
        """Keep every node's tracking forward open while the run is followed, and open it again
        on the first contact after the runner was away (a restarted supervisor, a reconnect),
        so a relay that journaled meanwhile replays. A host that refuses leaves its relay
        journaling; the job goes on."""
        for node in handle.nodes:
            if node.forward:
                try:
                    self.pool.forward(node.host, *node.forward)
                except BackendError:
                    pass

    def _stream(self, node: Node) -> OutputStream:
        """The node's follower channel, (re)opened at the node's read position."""
        stream = self._streams.get(_key(node))
        if stream is None:
            command = follow_command(node.exec_dir, node.cursor, self.pids_on_host, node.host.python)
            stream = self._streams[_key(node)] = self.pool.stream(node.host, command)
        return stream

    def _pump(self, node: Node) -> bytes:
        """All the node's channel has brought that read_output has not handed on; a lost channel
        is dropped (the next call reopens it at the node's cursor) and raised."""
        stream = self._stream(node)
        try:
            unread = self._unread[_key(node)] = self._unread.get(_key(node), b"") + stream.read()
        except BackendError:
            stream.close()
            self._streams.pop(_key(node), None)
            self._unread.pop(_key(node), None)
            raise
        return unread

    def poll(self, handle: NodesHandle) -> JobState:
        """Each node's state as its follower channel last said it: no SSH command per poll."""
        self.hold_forwards(handle)
        exits: dict[int, int] = {}
        syncing: list[str] = []
        for node in handle.nodes:
            self._pump(node)
            word, _, said = (self._stream(node).end or "").partition(" ")
            if word == "GONE":
                self.cancel(handle)
                return JobState(False, None, f"node {node.rank} on {node.host.label}: process vanished")
            if word == "EXIT":
                exits[node.rank] = int(said or 1)
            elif self._stream(node).syncing:
                syncing.append(self._stream(node).syncing)
        failed = {r: c for r, c in exits.items() if c != 0}
        multi = len(handle.nodes) > 1
        if failed:
            rank, code = min(failed.items())
            if len(exits) < len(handle.nodes):
                self.cancel(handle)  # one node failed: stop the others rather than let them hang
            return JobState(False, code, f"node {rank} exited with {code}" if multi else "")
        if len(exits) == len(handle.nodes):
            return JobState(False, 0)
        return JobState(True, detail=jobscript.syncing_detail(syncing))

    def read_output(self, handle: NodesHandle) -> bytes:
        chunks = []
        multi = len(handle.nodes) > 1
        for node in handle.nodes:  # every node first: a lost one raises before any byte is taken
            self._pump(node)
        for node in handle.nodes:
            data = self._unread.pop(_key(node), b"")
            node.cursor += len(data)
            if not multi:
                chunks.append(data)
                continue
            text = node.partial + data.decode("utf-8", errors="replace")
            complete, _, node.partial = text.rpartition("\n")
            if node.partial and self._stream(node).end:  # the node is over: its last line is whole
                complete, node.partial = f"{complete}\n{node.partial}" if complete else node.partial, ""
            if complete:
                chunks.append("".join(f"[node {node.rank}] {ln}\n" for ln in complete.split("\n")).encode())
        return b"".join(chunks)

    def wait(self, handle: NodesHandle, seconds: float) -> None:
        """Until a node's channel brings anything (output, its end, a heartbeat) or ``seconds``."""
        import select
        import time

        channels = [self._streams[_key(n)].channel for n in handle.nodes if _key(n) in self._streams]
        if channels:
            select.select(channels, [], [], seconds)
        else:
            time.sleep(seconds)

    def cancel(self, handle: NodesHandle) -> None:
        self._on_every_node(handle.nodes, lambda node: scripts.kill(node.exec_dir))

    def release(self, handle: NodesHandle) -> None:
        self.end_followers(handle)
        self._on_every_node(handle.nodes, lambda node: scripts.release(node.root, node.exec_dir))

    def end_followers(self, handle: NodesHandle) -> None:
        """The attempt is over: its followers end with it, before this returns (a cancelled job
        never writes the exit code that would end them; left, they ran until the connection closed)."""
        for node in handle.nodes:
            stream = self._streams.pop(_key(node), None)
            self._unread.pop(_key(node), None)
            if stream is not None:
                stream.close()

    def _on_every_node(self, nodes: list[Node], script: Any) -> None:
        """Run a node's script on all nodes at once (a cancel of 32 nodes takes one node's time);
        raise only when no node could be reached."""
        from concurrent.futures import ThreadPoolExecutor

        def one(node: Node) -> str | None:
            try:
                self.pool.exec(node.host, script(node), timeout=30)
            except BackendError as exc:
                return str(exc)
            return None

        if not nodes:
            return
        with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as workers:
            problems = [p for p in workers.map(one, nodes) if p is not None]
        if problems and len(problems) == len(nodes):
            raise BackendError("; ".join(problems))
