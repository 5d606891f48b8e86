"""The slurm target: a Slurm cluster reached through its login node; Slurm decides where and when.

hml stages the code once (content-addressed, through the SSH layer) and materialises the job's
inputs once (``runners.data.stage``, run on the login node) into ``remote_root`` on the file
system the login node shares with the compute nodes, writes each node's wrapper and
environment beside it, and hands a generated batch script to ``sbatch``. The script starts one
task per node with ``srun``; each takes the torchrun rendezvous from the allocation
(``MASTER_ADDR``: the first node, ``NODE_RANK``: ``SLURM_NODEID``) and runs the wrapper every
target runs (``hmlkit.node.jobscript``), so output is redacted at the source and each node leaves
``exit_code`` beside its ``output.log``. Following is ``squeue`` (``sacct`` once slurmctld has
forgotten the job), cancel is ``scancel``, and Slurm's own ends (TIMEOUT, NODE_FAIL, PREEMPTED,
OUT_OF_MEMORY) become the run's reason. Retries are new submissions: the supervisor's.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hmlkit.errors import BackendError, UsageError
from hmlkit.node import jobscript
from hmlkit.profile import SlurmTarget
from hmlkit.ssh import preflight
from hmlkit.ssh.hosts import trust, write_files
from hmlkit.ssh.pool import HostPool
from runners.backends.base import Backend, JobState, LaunchRequest, Usage
from runners.backends.nodes import Node, NodeRunner, NodesHandle, known_hosts, torchrun_line
from runners.data.stage import stage_remote
from runners.envs import ship
from runners.envs.lock import python_of
from runners.spec import JobSpec, memory_mib
from runners.state.paths import runner_id

QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
ACTIVE = QUEUED | {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}
ENDS = {
    "TIMEOUT": "Slurm TIMEOUT: the job reached its time limit (max_runtime, or the partition's)",
    "NODE_FAIL": "Slurm NODE_FAIL: a node of the job failed",
    "PREEMPTED": "Slurm PREEMPTED: the scheduler took the nodes for another job",
    "OUT_OF_MEMORY": "Slurm OUT_OF_MEMORY: the job used more than its memory; raise resources.memory",
    "CANCELLED": "Slurm CANCELLED: the job was cancelled outside hml (scancel, or an admin)",
    "BOOT_FAIL": "Slurm BOOT_FAIL: a node of the job failed to boot",
    "DEADLINE": "Slurm DEADLINE: the job could not finish before its deadline",
}
_UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Zero Bytes were transmitted")
"""sbatch's words for a controller that is down or busy: not ready, rather than a refusal."""
_STARTS = re.compile(r"to start at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")
ROOM_S = 10.0
"""A job Slurm would start this soon counts as having room now (``--target auto``)."""

_PRELUDE = """#!/bin/bash
# hybridml batch script for run {run_id}: one task per node, each running that node's wrapper
set -u
export HML_ATTEMPT_DIR={attempt}
nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
addr() {{ scontrol show node "$1" | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p'; }}
MASTER_ADDR=$(addr "$(echo "$nodes" | head -n 1)")
HML_NODE_IPS=$(for n in $nodes; do addr "$n"; done | paste -sd, -)
export MASTER_ADDR HML_NODE_IPS MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
task='export NODE_RANK=$SLURM_NODEID HML_NODE_RANK=$SLURM_NODEID
exec bash "$HML_ATTEMPT_DIR/node-$SLURM_NODEID/{wrapper}"'
exec srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 --label bash -c "$task"
"""

_POLL = """umask 077; c={cache}
exec 8>>"$c.lock"; flock 8
if [ $(( $(date +%s) - $(stat -c %Y "$c" 2>/dev/null || echo 0) )) -ge {max_age} ]; then
  squeue --me -h --states=all -o '%i|%T|%r|%N' > "$c.tmp" 2>/dev/null && mv "$c.tmp" "$c"
fi
exec 8>&-
s=$(grep -m 1 "^{job}|" "$c" 2>/dev/null | cut -d '|' -f 2-)
[ -n "$s" ] || s=$(squeue -h --states=all -j {job} -o '%T|%r|%N' 2>/dev/null)
[ -n "$s" ] || s=$(sacct -n -P -X -j {job} -o State 2>/dev/null | head -n 1)
echo "STATE ${{s:-UNKNOWN}}"
cd {attempt} || exit 0
for d in node-*; do
  [ -f "$d/exit_code" ] && echo "EXIT ${{d#node-}} $(cat "$d/exit_code")"
  [ -f "$d/syncing" ] && echo "SYNCING ${{d#node-}} $(cat "$d/syncing")"
done
true
"""
"""Prints ``STATE <Slurm state>|<reason>|<nodes>``, then ``EXIT <rank> <code>`` per node that ended
and ``SYNCING <rank> <records>`` per node whose wrapper waits for its relay to drain."""


CANCEL_WAIT_S = 30.0
_CANCEL = """scancel {job} 2>/dev/null; end=$(( $(date +%s) + {wait} ))
live=PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED
while [ "$(date +%s)" -lt "$end" ]; do
  s=$(squeue -h -j {job} -t $live -o %T 2>&1) && [ -z "$s" ] && break
  case "$s" in
    *"Invalid job id"*) break ;;
    COMPLETING|*error*) ;;
    *) scancel {job} 2>/dev/null ;;
  esac
  sleep 0.5
done
true
"""
"""Cancel, then wait for Slurm to forget the job's steps: a job no longer listed (or one slurmctld
has purged) is over; one still RUNNING or PENDING (a lost ``scancel``) is cancelled again."""


class SlurmHandle(NodesHandle):
    """One submission: the Slurm job and, per node, the files the login node reads it by."""

    job_id: str
    attempt_dir: str


class SlurmBackend(Backend[SlurmHandle]):
    kind = "slurm"
    Config = SlurmTarget
    handle_type = SlurmHandle
    poll_interval = 2.0
    """slurmctld answers every user's squeue; polling it faster only loads the controller."""
    config: SlurmTarget

    def __init__(self, name: str, config: SlurmTarget) -> None:
        super().__init__(name, config)
        self.pool = HostPool(known_hosts(config), config.connect_timeout, name, config.remote_root)
        # the job's processes run on compute nodes, not on the login host that follows its files
        self.nodes = NodeRunner(self.pool, int(config.max_workdir_mb * 1e6), pids_on_host=False)

    def close(self) -> None:
        self.pool.close()

    def _slurm(self, command: str, timeout: float = 30.0) -> tuple[int, str, str]:
        """Run a shell command on the login node with the cluster's Slurm configuration."""
        conf = self.config.slurm_conf
        prefix = f"export SLURM_CONF={shlex.quote(conf)}; " if conf else ""
        rc, out, err = self.pool.exec(self.config.login, prefix + command, timeout=timeout)
        return rc, str(out), err

    def options(self, spec: JobSpec) -> list[str]:
        """The resource request, shared by the real submission and the preflight's ``--test-only``."""
        res, cfg = spec.resources, self.config
        opts = [f"--nodes={spec.num_nodes}", "--ntasks-per-node=1"]
        if res.cpus:
            opts.append(f"--cpus-per-task={math.ceil(res.cpus)}")
        if res.memory:
            opts.append(f"--mem={memory_mib(res.memory)}M")
        if res.gpus:
            opts.append(f"--gres={cfg.gres_name}:{res.gpus}")
        if spec.max_runtime:
            # Slurm's limit is whole minutes, checked about every 30 s: the supervisor stops the
            # job at max_runtime itself; this limit backs it up when no supervisor is around
            opts.append(f"--time={math.ceil(spec.max_runtime / 60)}")
        for flag, value in (
            ("partition", cfg.partition),
            ("account", cfg.account),
            ("qos", cfg.qos),
            ("constraint", cfg.constraints),
        ):
            if value:
                opts.append(f"--{flag}={value}")
        return opts

    def preflight(self, spec: JobSpec, workdir: Path) -> None:
        """Host key verified, workdir size, what the login node lacks (hmlkit/ssh/preflight.py:
        the compute nodes share its file system and, as a rule, its software), and Slurm's own
        verdict on the request (``sbatch --test-only``): a job the cluster can never run is
        refused before a run exists."""
        from hmlkit.ssh.staging import scan

        scan(workdir, self.nodes.max_workdir_bytes)
        login = self.config.login
        root = self.pool.root(login)  # one the login cannot write is refused here (UsageError)
        _, report, _ = self.pool.exec(login, f"ROOT={shlex.quote(root)}\n{preflight.script(login.python)}")
        lacks = preflight.problems(login, root, report, 0)  # GPUs: the compute nodes', Slurm's to judge
        if lacks:
            raise UsageError(f"target {self.name!r} cannot run jobs: {'; '.join(lacks)}")
        rc, said, _ = self._test_only(spec)
        if rc != 0 and any(s in said for s in _UNREACHABLE):
            raise BackendError(f"the Slurm controller does not answer: {said}")
        if rc != 0:
            raise UsageError(f"target {self.name!r} can never run this job: {said}")

    def _test_only(self, spec: JobSpec) -> tuple[int, str, str]:
        """Slurm's verdict on the request, nothing submitted: (exit status, its last line, the
        login node's clock, which Slurm's times are in)."""
        opts = " ".join(shlex.quote(o) for o in self.options(spec))
        rc, now, err = self._slurm(f"date +%Y-%m-%dT%H:%M:%S; sbatch --test-only {opts} --wrap=true")
        return rc, (err.strip().splitlines() or [f"sbatch exit {rc}"])[-1], now.strip()

    def room(self, spec: JobSpec) -> str | None:
        """Room now when Slurm expects to start the job within ``ROOM_S`` (its own estimate, from
        ``sbatch --test-only``); else when it would, so ``--target auto`` can burst elsewhere."""
        from datetime import datetime

        rc, said, now = self._test_only(spec)
        match = _STARTS.search(said)
        if rc != 0 or not match:
            return f"Slurm cannot say when it would start the job: {said}"
        wait = (datetime.fromisoformat(match[1]) - datetime.fromisoformat(now)).total_seconds()
        return None if wait <= ROOM_S else f"Slurm expects to start it at {match[1]} (in {wait / 60:.0f} min)"

    def launch(self, request: LaunchRequest) -> tuple[SlurmHandle, Usage]:
        from hmlkit.ssh.staging import scan, stage

        spec, login = request.spec, self.config.login
        root = self.pool.root(login)
        manifest = scan(request.workdir, self.nodes.max_workdir_bytes)
        code_dir = stage(self.pool.runner(login), manifest, request.workdir, root, login.python).code_dir
        attempt = f"{root}/runs/{request.run_id}/attempt-{request.attempt}"
        ranks = range(spec.num_nodes)
        dirs = " ".join(shlex.quote(f"{attempt}/node-{k}") for k in ranks)
        self.pool.exec(login, f"umask 077 && mkdir -p {dirs}")  # private to the login's user
        # once, on the login node: the cache under remote_root is on the nodes' shared file system
        data = stage_remote(self.pool, login, root, attempt, list(request.inputs), self.config.data_via)
        shipped = ship.stage(self.pool, login, root, request.environment, self.config.env_via)
        gpus = spec.resources.gpus
        run_text = torchrun_line(spec.run, spec.num_nodes > 1 or gpus > 1)
        env = {
            **request.env,
            **request.secrets,
            "NNODES": str(spec.num_nodes),
            "NPROC_PER_NODE": str(max(gpus, 1)),
            "HML_NUM_NODES": str(spec.num_nodes),
            "HML_GPUS_PER_NODE": str(gpus),
            "HML_CODE_DIR": code_dir,
            jobscript.PYTHON: login.python,
            **data.env,
            **shipped.env,
        }
        files: dict[str, str] = {}
        for k in ranks:
            node_files = jobscript.render(
                f"{attempt}/node-{k}",
                code_dir,
                spec.setup,
                run_text,
                request.run_id,
                list(request.secrets),
                request.environment,
                python_of(request.environment or ""),
                f"{root}/envs",  # on the shared file system: built once for the whole cluster
            )
            node_files[jobscript.ENV_FILE] = jobscript.env_lines(env)
            files |= {f"node-{k}/{name}": text for name, text in node_files.items()}
        directives = [
            f"--job-name={spec.name}",
            f"--comment=hml-run:{request.run_id},runner:{runner_id()}",  # what hml gc looks for
            f"--chdir={attempt}",
            f"--output={attempt}/node-0/{jobscript.OUTPUT}",  # Slurm's own words join node 0's log
            "--open-mode=append",
            "--no-requeue",  # a retry is hml's: a new submission with fresh files
            "--export=ALL",
            *self.options(spec),
        ]
        prelude = _PRELUDE.format(
            run_id=request.run_id,
            attempt=shlex.quote(attempt),
            nodes=spec.num_nodes,
            wrapper=jobscript.WRAPPER,
        )
        first, rest = prelude.split("\n", 1)
        files["batch.sh"] = "\n".join([first, *(f"#SBATCH {d}" for d in directives), rest])
        write_files(self.pool.runner(login), attempt, files)
        rc, out, err = self._slurm(f"sbatch --parsable {shlex.quote(attempt)}/batch.sh")
        job_id = out.strip().split(";")[0]
        if rc != 0 or not job_id.isdigit():
            self.pool.exec(login, f"rm -f {attempt}/node-*/{jobscript.ENV_FILE}")
            raise BackendError(f"sbatch refused the job: {(err or out).strip()[-300:]}")
        handle = SlurmHandle(
            job_id=job_id,
            attempt_dir=attempt,
            nodes=[Node(host=login, rank=k, root=root, exec_dir=f"{attempt}/node-{k}") for k in ranks],
        )
        usage = Usage(
            nodes=spec.num_nodes,
            gpus_per_node=gpus,
            gpu_hour_usd=self.config.gpu_hour_usd,
            hosts=[f"Slurm job {job_id} (login {login.label})"],
            data_bytes={login.label: data.fetched_bytes + data.streamed_bytes} if request.inputs else {},
            data_streamed={login.label: data.streamed_bytes} if data.streamed_bytes else {},
        )
        return handle, usage

    def poll(self, handle: SlurmHandle) -> JobState:
        """One round trip: Slurm's state of the job, and the exit codes the nodes left.

        Every run of this login user shares one ``squeue --me`` per poll interval (a file under
        ``remote_root``, refreshed under a lock by whichever run asks first): slurmctld answers
        one query for all of them. A job too new for it is asked alone, and one slurmctld has
        forgotten goes to ``sacct``.
        """
        job = handle.job_id
        script = _POLL.format(
            cache=shlex.quote(f"{handle.nodes[0].root}/squeue"),
            max_age=math.ceil(self.poll_interval),
            job=job,
            attempt=shlex.quote(handle.attempt_dir),
        )
        rc, out, _ = self._slurm(script, timeout=15)
        if rc != 0 or not out.startswith("STATE "):
            raise BackendError(f"cannot ask Slurm about job {job}: {out.strip()[-200:]}")
        lines = out.splitlines()
        state, _, more = lines[0][6:].partition("|")
        state = state.split(" ")[0]  # sacct: "CANCELLED by 1000"
        reason, _, nodelist = more.partition("|")
        if state in QUEUED:
            why = reason if reason not in ("", "None") else "waiting to be scheduled"
            return JobState(True, detail=f"queued in Slurm: {why}", queued=True)
        found = [f for f in (ln.split() for ln in lines[1:]) if len(f) == 3]
        if state in ACTIVE:
            syncing = jobscript.syncing_detail([f[2] for f in found if f[0] == "SYNCING"])
            return JobState(True, detail=syncing or f"running in Slurm job {job} on {nodelist}")
        exits = {int(f[1]): int(f[2]) for f in found if f[0] == "EXIT"}
        failed = {r: c for r, c in exits.items() if c != 0}
        code = min(failed.items())[1] if failed else None
        if state in ENDS:
            return JobState(False, code, ENDS[state])
        if (failed or len(exits) < len(handle.nodes)) and self._over_memory(handle):
            return JobState(False, code, ENDS["OUT_OF_MEMORY"])
        if failed:
            rank = min(failed)
            return JobState(False, code, f"node {rank} exited with {code}" if len(handle.nodes) > 1 else "")
        if len(exits) == len(handle.nodes):
            return JobState(False, 0)
        if state == "UNKNOWN":
            return JobState(False, None, f"Slurm no longer knows job {job} and it left no exit code")
        why = reason or "no reason given"
        return JobState(False, None, f"Slurm {state} ({why}) before the job's wrapper ended")

    def _over_memory(self, handle: SlurmHandle) -> bool:
        """Whether Slurm killed the job for its memory. With cgroups the job ends OUT_OF_MEMORY;
        without them (``JobAcctGatherParams=OverMemoryKill``) it ends FAILED, and only the step
        daemon's words, which join node 0's log, say why."""
        log = shlex.quote(f"{handle.attempt_dir}/node-0/{jobscript.OUTPUT}")
        rc, _, _ = self._slurm(f"grep -qs 'slurmstepd-[^:]*: error: Exceeded job memory limit' {log}")
        return rc == 0

    def read_output(self, handle: SlurmHandle) -> bytes:
        return self.nodes.read_output(handle)

    def cancel(self, handle: SlurmHandle) -> None:
        """``scancel``, then wait until Slurm has ended every step (its KillWait) and run the
        Epilog (the job leaves COMPLETING after it), so nothing of the job runs on any node when
        this returns. Only an answer from Slurm ends the wait early: a busy controller's error
        is no answer, and a job still running has its ``scancel`` sent again. The wait is
        bounded in time, well inside the SSH command's timeout."""
        self._slurm(
            _CANCEL.format(job=handle.job_id, wait=math.ceil(CANCEL_WAIT_S)), timeout=CANCEL_WAIT_S + 15
        )

    def teardown(self, handle: SlurmHandle) -> None:
        """The allocation ends with the job (``scancel`` in case the job outlived its follower);
        a job cancelled while queued never read its environment: delete it, secrets and all.
        The login node's followers end here too: only an exit code ends them on their own."""
        self.nodes.end_followers(handle)
        self._slurm(
            f"scancel {handle.job_id} 2>/dev/null; "
            f"rm -f {shlex.quote(handle.attempt_dir)}/node-*/{jobscript.ENV_FILE}; true"
        )

    def gc(self, is_live: Callable[[str], bool]) -> list[str]:
        """Cancel this runner's Slurm jobs whose run is over or unknown here (a supervisor gone for
        good would otherwise leave them holding nodes until their time limit); what was done."""
        rc, out, err = self._slurm("squeue --me -h -o '%i|%k'")
        if rc != 0:
            raise BackendError(f"cannot list the Slurm jobs: {err.strip()[-200:]}")
        done = []
        root = self.pool.root(self.config.login)
        own = re.compile(rf"^(\d+)\|hml-run:(\w+),runner:{runner_id()}$", re.MULTILINE)
        for job, run_id in own.findall(out):
            if not is_live(run_id):
                runs = shlex.quote(f"{root}/runs/{run_id}")
                self._slurm(f"scancel {job}; rm -f {runs}/attempt-*/node-*/{jobscript.ENV_FILE}")
                done.append(f"cancelled Slurm job {job} of run {run_id} (run over or unknown)")
        return done

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "login": self.config.login.label, "partition": self.config.partition}

    def trust(self, confirm: Callable[[list[tuple[str, str, str]]], bool]) -> list[tuple[str, str, str]]:
        return trust([self.config.login], known_hosts(self.config), confirm)
