"""A real Slurm cluster for the tests: Debian's ``munged``, ``slurmctld`` and one ``slurmd`` per node.

Why real Slurm: the ``slurm`` target must meet what it meets on a cluster — ``sbatch`` refusing a
request, PENDING with Slurm's reason, ``srun`` across nodes, ``scancel`` and Slurm's own ends
(TIMEOUT, NODE_FAIL) — and a fake ``squeue`` would only echo our assumptions.

Everything runs on this machine, as the current user, from one directory: a munge key and
``munged`` on its own socket (``AuthInfo=socket=``), a ``slurm.conf`` that the daemons and every
client command find through ``SLURM_CONF``, and Debian's multiple-slurmd build: each compute node
is ``slurmd -N nodeK`` on its own port, all on 127.0.0.1. The login node is an sshd host of the
SSH bed (``tests/sshbed.py``), so the "shared file system" is this disk.

The daemons carry ``HML_TESTBED_HOST`` markers (the SSH bed's variable): ``<bed>-ctl`` for munged
and slurmctld, ``<bed>-nodeK`` for a node's slurmd, which its ``slurmstepd`` processes inherit.
``kill_node`` makes a node die whole (slurmd, its steps and the job's processes under them).

Used by the ``slurm_bed`` pytest fixture and, for people, ``python -m tests.slurmbed up --dir D``
/ ``down --dir D`` (see docs/runbooks/slurm-testbed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.sshbed import MARKER_VAR, Host, _descendants, _free_port, _marked, _proc_table, start_bed
from tests.tier import refuse_in_fast_tier

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch")
INSTALL_HINT = "apt-get install -y slurmctld slurmd slurm-client munge"
STATE_FILE = "slurmbed.json"
EPILOG = Path(__file__).resolve().parents[1] / "docs" / "runbooks" / "slurm-epilog-linuxproc.sh"
PARTITION = "debug"
"""The default partition: every node but the last."""
URGENT_PARTITION = "urgent"
"""The default partition's nodes at a higher priority tier: its jobs preempt (cancel) the others."""
SHORT_PARTITION = "short"
"""The last node alone, with a one-minute default time limit: Slurm's TIMEOUT without hml's
max_runtime, on a node of its own so the minute it takes overlaps other tests."""


_EPILOG_LOGGED = """#!/bin/sh
# the bed's Epilog: the runbook's, with which of the job's processes it met and left in {log}
job() {{
  for e in $(grep -lzx "SLURM_JOB_ID=$SLURM_JOB_ID" /proc/[0-9]*/environ 2>/dev/null); do
    p=${{e#/proc/}}; p=${{p%/environ}}; printf '%s(%s) ' "$p" "$(cat /proc/$p/comm 2>/dev/null)"
  done
}}
echo "$(date +%T.%N) job $SLURM_JOB_ID node $SLURMD_NODENAME: epilog starts; its processes: $(job)" >> {log}
{runbook}
echo "$(date +%T.%N) job $SLURM_JOB_ID node $SLURMD_NODENAME: epilog ends; left: $(job)" >> {log}
"""


@dataclass
class SlurmBed:
    root: Path
    nodes: list[str]
    marker: str
    procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    """The daemons this process started, reaped at ``stop`` so none lingers as a zombie."""

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def slurm(self, *cmd: str, check: bool = True) -> str:
        """A Slurm client command against this cluster; its stdout."""
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
        return out.stdout

    def target(self, login: Host, known_hosts: Path, **extra: object) -> dict:
        """An hml profile target of kind ``slurm`` whose login node is ``login``."""
        return {
            "kind": "slurm",
            "login": {
                "address": login.address,
                "port": login.port,
                "user": login.user,
                "identity_file": str(login.identity_file),
            },
            "known_hosts": str(known_hosts),
            "remote_root": str(self.root / "shared"),
            "slurm_conf": str(self.conf),
            **extra,
        }

    def _start(self, args: list[str], marker: str, log: str) -> None:
        with (self.root / log).open("ab") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={
                    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                    "SLURM_CONF": str(self.conf),
                    MARKER_VAR: marker,
                },
                start_new_session=True,
            )
        self.procs.append(proc)

    def start_node(self, node: str) -> None:
        """(Re)start a compute node's slurmd; it registers and turns idle (ReturnToService=2)."""
        (self.root / "spool" / node).mkdir(parents=True, exist_ok=True)
        self._start(["slurmd", "-D", "-N", node], f"{self.marker}-{node}", f"slurmd-{node}.out")

    def kill_node(self, node: str) -> None:
        """The node dies: SIGSTOP, then SIGKILL, its slurmd, its steps and everything under them."""
        self._kill(f"{self.marker}-{node}")

    def _kill(self, marker: str) -> None:
        deadline = time.monotonic() + 15
        stopped: set[int] = set()
        while time.monotonic() < deadline:
            table = _proc_table()
            pids = _marked(marker, table)
            for pid in list(pids):
                pids |= _descendants(pid, table)
            if not pids - stopped:
                break
            for pid in pids - stopped:
                _signal(pid, signal.SIGSTOP)
            stopped |= pids
        for pid in stopped:
            _signal(pid, signal.SIGKILL)
        for pid in stopped:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)

    def node_states(self, partition: str) -> dict[str, str]:
        out = self.slurm("sinfo", "-h", "-N", "-p", partition, "-o", "%N %T", check=False)
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def wait_idle(self, partition: str = PARTITION, timeout: float = 60) -> None:
        """Until every node of ``partition`` is idle (no job on it, registered, not down)."""
        want = len(self.nodes) - 1 if partition == PARTITION else 1
        deadline = time.monotonic() + timeout
        while True:
            states = self.node_states(partition)
            if len(states) == want and all(s == "idle" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm nodes not idle after {timeout}s: {states}; see {self.root}")
            time.sleep(0.3)

    def job_processes(self, job_id: str) -> list[int]:
        """Live processes of Slurm job ``job_id`` on any node: its steps and its tasks."""
        needle, step = f"SLURM_JOB_ID={job_id}".encode(), f"[{job_id}.".encode()
        found = []
        for pid, (_, state) in _proc_table().items():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if state != "Z" and (needle in env or cmdline.startswith(b"slurmstepd: " + step)):
                found.append(pid)
        return found

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of slurmctld's, each slurmd's and the epilog's logs (a failure's context)."""
        logs = [self.root / "slurmctld.log", *sorted((self.root / "spool").glob("slurmd-*.log"))]
        logs.append(self.root / "epilog.log")
        parts = []
        for log in logs:
            text = log.read_text(errors="replace") if log.exists() else "(missing)"
            parts.append(f"--- {log.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, then kill the nodes, slurmctld and munged; files stay."""
        jobs = self.slurm("squeue", "-h", "-o", "%i", check=False).split()
        if jobs:
            self.slurm("scancel", *jobs, check=False)
        for node in self.nodes:
            self._kill(f"{self.marker}-{node}")
        self._kill(f"{self.marker}-ctl")
        for proc in self.procs:
            proc.wait(timeout=10)

    def save_state(self) -> None:
        (self.root / STATE_FILE).write_text(json.dumps({"nodes": self.nodes, "marker": self.marker}))


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    state = _proc_table().get(pid)
    return state is not None and state[1] != "Z"


def _conf(root: Path, nodes: list[str], cluster: str) -> str:
    ports = [_free_port("127.0.0.1") for _ in range(len(nodes) + 1)]
    lines = [
        f"ClusterName={cluster}",  # per bed: the epilog kills only this cluster's job's processes
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmUser={os.environ.get('USER') or 'root'}",
        "AuthType=auth/munge",
        f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
        "CredType=cred/munge",
        f"StateSaveLocation={root / 'ctld'}",
        f"SlurmdSpoolDir={root / 'spool' / '%n'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'spool' / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'spool' / 'slurmd-%n.log'}",
        "MailProg=/bin/true",
        # no cgroups in a container: follow a job's processes by their parentage, and at the
        # job's end kill what daemonized itself out of it (the epilog we give such clusters)
        "ProctrackType=proctrack/linuxproc",
        f"Epilog={root / 'epilog.sh'}",
        "TaskPlugin=task/none",
        # memory read from /proc each second; a step past its --mem is killed: OUT_OF_MEMORY
        "JobAcctGatherType=jobacct_gather/linux",
        "JobAcctGatherParams=OverMemoryKill",
        "JobAcctGatherFrequency=task=1",
        # a job in the urgent partition cancels what holds its nodes in the default one: PREEMPTED
        "PreemptType=preempt/partition_prio",
        "PreemptMode=CANCEL",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        # memory is requested and enforced (OverMemoryKill); nodes declare far more than the
        # default, so CPUs alone decide where jobs fit, as before
        "SelectTypeParameters=CR_CPU_Memory",
        "DefMemPerCPU=8000",
        "MpiDefault=none",
        "SlurmdParameters=config_overrides",  # nodes may declare more CPUs than this machine has
        "ReturnToService=2",  # a killed node that comes back is usable again
        "SlurmdTimeout=5",  # a dead node is noticed within seconds (NODE_FAIL)
        "KillWait=2",
        "MinJobAge=300",
        "InactiveLimit=0",
    ]
    for node, port in zip(nodes, ports[1:], strict=True):
        lines.append(
            f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
            "CPUs=2 RealMemory=64000 State=UNKNOWN"
        )
    lines += [
        f"PartitionName={PARTITION} Nodes={','.join(nodes[:-1])} Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName={URGENT_PARTITION} Nodes={','.join(nodes[:-1])} PriorityTier=2 State=UP",
        f"PartitionName={SHORT_PARTITION} Nodes={nodes[-1]} DefaultTime=1 MaxTime=1 State=UP",
    ]
    return "\n".join(lines) + "\n"


def start_slurm(root: Path, n: int = 2) -> SlurmBed:
    """munged, slurmctld, ``n`` slurmd nodes in the default partition and one in the short one,
    under ``root``; returns once every node is idle."""
    refuse_in_fast_tier("a Slurm cluster")
    missing = [d for d in DAEMONS if not Path(d).exists()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing; install: {INSTALL_HINT}")
    root = Path(root).resolve()
    for sub in ("munge", "ctld", "spool", "shared"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    bed = SlurmBed(
        root=root, nodes=[f"node{i}" for i in range(1, n + 2)], marker=f"hml-slurm-{uuid.uuid4().hex[:8]}"
    )
    bed.conf.write_text(_conf(root, bed.nodes, bed.marker.replace("-", "")))
    (root / EPILOG.name).write_text(EPILOG.read_text())
    logged = _EPILOG_LOGGED.format(log=root / "epilog.log", runbook=root / EPILOG.name)
    (root / "epilog.sh").write_text(logged)
    for script in (EPILOG.name, "epilog.sh"):
        (root / script).chmod(0o755)
    try:
        munge = root / "munge"
        bed._start(
            [
                "munged",
                "--foreground",
                "--force",  # root, and a socket directory only its owner may enter
                f"--key-file={key}",
                f"--socket={munge / 'munge.socket'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            f"{bed.marker}-ctl",
            "munged.out",
        )
        _wait(lambda: (munge / "munge.socket").exists(), "munged", root / "munged.out")
        bed._start(["slurmctld", "-D", "-i"], f"{bed.marker}-ctl", "slurmctld.out")
        _wait(lambda: "is UP" in bed.slurm("scontrol", "ping", check=False), "slurmctld", root)
        for node in bed.nodes:
            bed.start_node(node)
        bed.wait_idle()
        bed.wait_idle(SHORT_PARTITION)
    except BaseException:
        bed.stop()
        raise
    return bed


def _wait(ready: Callable[[], bool], what: str, where: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout}s; see {where}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def slurm_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmBed]:
    """A Slurm cluster for the whole session, two nodes in the default partition; stopped at the end."""
    bed = start_slurm(tmp_path_factory.mktemp("slurmbed"), 2)
    try:
        yield bed
    finally:
        bed.stop()


def _up(directory: Path, n: int) -> None:
    directory = directory.resolve()
    ssh = start_bed(directory / "ssh", 1)
    ssh.save_state()
    bed = start_slurm(directory / "slurm", n)
    bed.save_state()
    known = directory / "known_hosts"
    known.write_text(ssh.known_hosts_text())
    login = ssh.hosts[0]
    profile = {"targets": {"local": {"kind": "local"}, "cluster": bed.target(login, known)}}
    text = yaml.safe_dump(profile, sort_keys=False)
    (directory / "hybridml.yaml").write_text(text)
    print(
        f"# Slurm test bed: {n} node(s); login node {login.user}@{login.address}:{login.port}\n"
        f"# Slurm commands here: export SLURM_CONF={bed.conf}\n"
        f"# profile: {directory / 'hybridml.yaml'}; stop: python -m tests.slurmbed down --dir {directory}\n"
        + text,
        end="",
    )


def _down(directory: Path) -> None:
    from tests.sshbed import _load

    directory = directory.resolve()
    state = directory / "slurm" / STATE_FILE
    if not state.exists():
        raise SystemExit(f"no Slurm test bed in {directory}")
    data = json.loads(state.read_text())
    SlurmBed(root=directory / "slurm", nodes=data["nodes"], marker=data["marker"]).stop()
    _load(directory / "ssh").stop()
    print(f"stopped the Slurm test bed in {directory}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.slurmbed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start munged, slurmctld, the nodes and a login sshd; print a profile")
    up.add_argument("--nodes", type=int, default=2, help="nodes in the default partition")
    up.add_argument("--dir", type=Path, required=True)
    down = sub.add_parser("down", help="stop what up started in --dir")
    down.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        _up(args.dir, args.nodes) if args.command == "up" else _down(args.dir)
    except RuntimeError as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
