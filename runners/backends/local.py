"""The local target: the job runs on this machine, in its own session and process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hmlkit.errors import NoCapacityError, UsageError
from hmlkit.node import jobscript
from hmlkit.profile import LocalTarget
from runners.backends.base import HOST_LOGIN, Backend, Feature, Handle, JobState, LaunchRequest, Usage
from runners.data.stage import stage_here
from runners.envs import ship
from runners.envs.lock import python_of
from runners.spec import JobSpec
from runners.state.paths import home


class LocalHandle(Handle):
    pid: int
    started: str | None
    """The kernel's start tick of ``pid``, so a recycled pid is not taken for our job."""
    exec_dir: str
    offset: int = 0
    data_bytes: int = 0


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _group_alive(pgid: int) -> bool:
    try:
        os.waitpid(pgid, os.WNOHANG)  # reap our own child, or a zombie leader looks alive
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _read(path: Path) -> list[str]:
    try:
        return [path.read_text()]
    except FileNotFoundError:
        return []


class LocalBackend(Backend[LocalHandle]):
    kind = "local"
    Config = LocalTarget
    handle_type = LocalHandle
    unsupported = {Feature.MULTI_NODE: "the local target is one machine; use an ssh or aws target"}
    config: LocalTarget

    def preflight(self, spec: JobSpec, workdir: Path) -> None:
        if spec.resources.gpus:
            from hmlkit.gpus import local_gpus

            have = len(local_gpus())
            if have < spec.resources.gpus:
                raise UsageError(
                    f"target {self.name!r} can never run this job: resources.gpus is "
                    f"{spec.resources.gpus}, this machine has {have} GPU(s); lower it or pick "
                    "another --target"
                )

    def launch(self, request: LaunchRequest) -> tuple[LocalHandle, Usage]:
        gpus = request.spec.resources.gpus
        if gpus:
            from hmlkit.gpus import local_gpus

            have = len(local_gpus())
            if have < gpus:
                raise NoCapacityError(f"the job asks for {gpus} GPU(s); this machine has {have}")
        exec_dir = request.state_dir / f"attempt-{request.attempt}"
        exec_dir.mkdir(parents=True, exist_ok=True)
        envs = home() / "envs"
        ship.place_pip(envs)
        files = jobscript.render(
            str(exec_dir),
            str(request.workdir),
            request.spec.setup,
            request.spec.run,
            request.run_id,
            list(request.secrets),
            request.environment,
            python_of(request.environment or ""),
            str(envs),
        )
        for name, text in files.items():
            (exec_dir / name).write_text(text)
        data = stage_here(list(request.inputs), home())
        env_file = exec_dir / jobscript.ENV_FILE
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(jobscript.env_lines({**request.env, **data.env, **request.secrets}))
        # this machine's login variables only (HOST_LOGIN, runners.runs.jobenv): never the supervisor's whole
        # environment; the interpreter hml runs under comes first, so `python` means it
        login = {k: os.environ[k] for k in HOST_LOGIN if k in os.environ}
        login["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{login.get('PATH', os.defpath)}"
        with open(exec_dir / jobscript.OUTPUT, "ab") as out:
            proc = subprocess.Popen(
                ["bash", str(exec_dir / jobscript.WRAPPER)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=login,
            )
        handle = LocalHandle(
            pid=proc.pid, started=_start_time(proc.pid), exec_dir=str(exec_dir), data_bytes=data.fetched_bytes
        )
        usage = Usage(
            gpus_per_node=gpus,
            gpu_hour_usd=self.config.gpu_hour_usd,
            hosts=["localhost"],
            data_bytes={"localhost": data.fetched_bytes} if request.inputs else {},
        )
        return handle, usage

    def poll(self, handle: LocalHandle) -> JobState:
        exit_file = Path(handle.exec_dir) / jobscript.EXIT_CODE
        if exit_file.exists():
            return JobState(running=False, exit_code=int(exit_file.read_text().strip() or 1))
        if _group_alive(handle.pid) and _start_time(handle.pid) in (handle.started, None):
            return JobState(
                running=True, detail=jobscript.syncing_detail(_read(exit_file.with_name(jobscript.SYNCING)))
            )
        return JobState(running=False, detail="the job's process ended without an exit code")

    def read_output(self, handle: LocalHandle) -> bytes:
        try:
            with open(Path(handle.exec_dir) / jobscript.OUTPUT, "rb") as fh:
                fh.seek(handle.offset)
                data = fh.read()
        except FileNotFoundError:
            return b""
        handle.offset += len(data)
        return data

    def wait(self, handle: LocalHandle, seconds: float) -> None:
        """Until the job writes or ends (a stat every 20 ms), or ``seconds``."""
        exec_dir = Path(handle.exec_dir)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if (exec_dir / jobscript.OUTPUT).stat().st_size > handle.offset:
                    return
            except FileNotFoundError:
                pass
            if (exec_dir / jobscript.EXIT_CODE).exists():
                return
            time.sleep(0.02)

    def cancel(self, handle: LocalHandle) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(handle.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _group_alive(handle.pid):
                    return
                time.sleep(0.05)
