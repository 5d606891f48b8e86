"""Our Python language host for the real Pulumi engine: ``pulumi-language-python``, written here.

The engine starts a language plugin as ``pulumi-language-python [--logtostderr] [-v=N]
[--tracing URL] ENGINE_ADDRESS``, reads the gRPC port it serves on from the first line of its
stdout and calls the ``pulumirpc.LanguageRuntime`` service on it. ``tests/pulumibed.py`` copies
this file into the engine's bin directory beside a ``pulumi-language-python`` launcher that runs
it with the interpreter in ``HML_PULUMI_PYTHON`` (``engine_env`` sets the test virtualenv's;
it needs ``grpcio`` and the ``pulumi`` SDK, whose generated stubs give the service).

What it implements, and only that (what ``pulumi up``/``preview``/``destroy`` and a Python policy
pack ask of a language host):

- ``GetPluginInfo`` (the engine's version), ``About`` (the interpreter and its version, which
  the engine records in an update's metadata), ``Handshake`` (accepted; the engine calls it only
  when attaching to a running host), ``GetRequiredPlugins``/``GetRequiredPackages`` (none: the
  provider is found on PATH), ``Cancel``.
- ``InstallDependencies`` (``pulumi install`` in a project or a policy pack): with the
  ``virtualenv`` runtime option, ``<base python> -m venv <virtualenv>`` when it is not a
  virtualenv yet, then ``<virtualenv>/bin/python -m pip install -r requirements.txt`` in the
  project's (pack's) directory, their output streamed back; pip's own settings
  (``PIP_CACHE_DIR``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``...) come from the environment. Without
  a ``virtualenv`` option nothing is installed (the interpreter is then the user's own).
- ``Run``: the program, as ``<python> -u pulumi-language-python-exec --monitor ... --engine ...
  --project --stack --pwd --dry_run --parallel --organization --root_directory PROGRAM ARGS``,
  the script from the pulumi SDK's module copied beside this one; config in ``PULUMI_CONFIG``
  and ``PULUMI_CONFIG_SECRET_KEYS`` (JSON). Exit 0 is success, 32 is a bail (the program has
  already told the user), anything else an error.
- ``RunPlugin``: a Python policy pack (kind ``analyzer``) as ``<python> -u -m pulumi.policy
  ARGS PACK_DIR``; any other plugin as ``<python> -u PLUGIN_DIR ARGS``; in the engine's working
  directory and environment, its stdout, stderr and exit code streamed back.

``<python>`` is ``<virtualenv>/bin/python`` for the project's (or pack's) ``virtualenv`` runtime
option (relative to its root directory), else ``PULUMI_PYTHON_CMD`` or ``python3`` from PATH; a
``virtualenv`` that does not exist fails ``Run`` and ``RunPlugin`` with the commands that make it
(``pulumi install``). ``<base python>``, which makes a virtualenv, is ``PULUMI_PYTHON_CMD`` or
``python3`` from PATH.

Not implemented (the service answers UNIMPLEMENTED): ``pulumi new``'s prompts and templates,
program dependencies (``pulumi about`` lists none), code generation (``GenerateProgram``,
``GenerateProject``, ``GeneratePackage``), ``Pack`` and ``Link``; toolchains other than pip with a
virtualenv (poetry, uv: ``InstallDependencies`` answers UNIMPLEMENTED), installing into an
ambient interpreter, ``use_language_version_tools`` (pyenv), and Pulumi's upgrade of pip,
setuptools and wheel before the requirements; debugger attachment; plugins run as
``python -m pulumi.run.plugin`` (a ``pyproject.toml`` without ``__main__.py``).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format
from pulumi.runtime.proto import language_pb2, language_pb2_grpc, plugin_pb2

VERSION = "3.276.0"
EXEC = Path(__file__).resolve().parent / "pulumi-language-python-exec"
BAIL = 32
"""pulumi-language-python-exec's exit code after it has shown the user an actionable error."""


def _options(info: Any) -> dict[str, Any]:
    if info is None or not info.HasField("options"):
        return {}
    return json_format.MessageToDict(info.options)


def _virtualenv(info: Any) -> Path | None:
    """The ``virtualenv`` runtime option as a path (relative to the root directory), or None."""
    venv = _options(info).get("virtualenv")
    if not venv:
        return None
    path = Path(venv)
    if not path.is_absolute():
        path = Path(info.root_directory or info.program_directory or ".") / path
    return path


def base_python() -> str:
    """The interpreter a virtualenv is made with, as Pulumi's own host picks it."""
    return os.environ.get("PULUMI_PYTHON_CMD") or "python3"


def python_for(info: Any) -> tuple[str, dict[str, str]]:
    """The interpreter for a program (or pack) and what its environment gains from a virtualenv."""
    path = _virtualenv(info)
    if path is not None:
        return str(path / "bin" / "python"), _activate(path)
    return base_python(), {}


def _activate(venv: Path) -> dict[str, str]:
    return {
        "VIRTUAL_ENV": str(venv),
        "PATH": os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")]),
    }


def missing_virtualenv(info: Any) -> str | None:
    """Why the ``virtualenv`` option cannot run anything (it is not a virtualenv), with the fix."""
    path = _virtualenv(info)
    if path is None or (path / "bin" / "python").exists():
        return None
    root = Path(info.root_directory or info.program_directory or ".")
    manifest = "PulumiPolicy.yaml" if (root / "PulumiPolicy.yaml").is_file() else "Pulumi.yaml"
    state = "doesn't appear to be a virtual environment" if path.exists() else "doesn't exist"
    return (
        f"The 'virtualenv' option in {manifest} is set to {_options(info)['virtualenv']!r}, but "
        f"{str(path)!r} {state}; run `pulumi install` in {root} to create it and install "
        f"requirements.txt into it, or by hand: python3 -m venv {path} && "
        f"{path}/bin/python -m pip install -r {root}/requirements.txt"
    )


def _stream(proc: subprocess.Popen[bytes]) -> Iterator[tuple[str, bytes]]:
    """A child's stdout and stderr chunks as they come, until both close."""
    chunks: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def pump(name: str, stream: Any) -> None:
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            chunks.put((name, chunk))
        chunks.put((name, b""))

    for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        threading.Thread(target=pump, args=(name, stream), daemon=True).start()
    open_streams = 2
    while open_streams:
        name, chunk = chunks.get()
        if not chunk:
            open_streams -= 1
            continue
        yield name, chunk


class LanguageHost(language_pb2_grpc.LanguageRuntimeServicer):
    def __init__(self, engine: str, tracing: str | None) -> None:
        self.engine = engine
        self.tracing = tracing

    def GetPluginInfo(self, request: Any, context: Any) -> Any:
        return plugin_pb2.PluginInfo(version=VERSION)

    def Handshake(self, request: Any, context: Any) -> Any:
        return language_pb2.LanguageHandshakeResponse()

    def GetRequiredPlugins(self, request: Any, context: Any) -> Any:
        return language_pb2.GetRequiredPluginsResponse()

    def GetRequiredPackages(self, request: Any, context: Any) -> Any:
        return language_pb2.GetRequiredPackagesResponse()

    def InstallDependencies(self, request: Any, context: Any) -> Iterator[Any]:
        """``pulumi install``: make the ``virtualenv`` (when it is not one yet) and install
        requirements.txt into it, as a reviewer's CI makes a policy pack's own; the output streamed."""
        info = request.info if request.HasField("info") else None
        toolchain = _options(info).get("toolchain", "pip")
        if toolchain != "pip":
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"toolchain {toolchain!r}: this host knows pip only")
        venv = _virtualenv(info) if info is not None else None
        if venv is None:
            yield language_pb2.InstallDependenciesResponse(
                stderr=b"no 'virtualenv' runtime option: nothing installed (the interpreter is your own)\n"
            )
            return
        root = Path(info.root_directory or info.program_directory or request.directory or ".")
        steps: list[tuple[str, list[str]]] = []
        if not (venv / "bin" / "python").exists():
            steps.append(("Creating virtual environment...", [base_python(), "-m", "venv", str(venv)]))
        if (root / "requirements.txt").is_file():
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-r", "requirements.txt"]
            steps.append(("Installing dependencies in virtual environment...", pip))
        env = {**os.environ, **_activate(venv)}
        env.pop("PYTHONHOME", None)
        for message, args in steps:
            yield language_pb2.InstallDependenciesResponse(stdout=f"{message}\n".encode())
            try:
                proc = subprocess.Popen(
                    args,
                    cwd=root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            except OSError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"could not run {args[0]}: {exc}")
            context.add_callback(lambda proc=proc: proc.poll() is None and proc.kill())
            for name, chunk in _stream(proc):
                yield language_pb2.InstallDependenciesResponse(**{name: chunk})
            if code := proc.wait():
                context.abort(grpc.StatusCode.UNKNOWN, f"{' '.join(args)} in {root} exited {code}")
        yield language_pb2.InstallDependenciesResponse(stdout=b"Finished installing dependencies\n")

    def About(self, request: Any, context: Any) -> Any:
        """The interpreter and its version, for the update's metadata (``runtime.*``)."""
        python, _ = python_for(request.info if request.HasField("info") else None)
        try:
            version = subprocess.run(
                [python, "-c", "import platform; print(platform.python_version())"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"could not run {python}: {exc}")
        return language_pb2.AboutResponse(executable=python, version=version)

    def Cancel(self, request: Any, context: Any) -> Any:
        return empty_pb2.Empty()

    def Run(self, request: Any, context: Any) -> Any:
        info = request.info if request.HasField("info") else None
        if info is not None and (why := missing_virtualenv(info)):
            return language_pb2.RunResponse(error=why)
        python, venv_env = python_for(info)
        program = request.program or "."
        if info is not None and info.program_directory:
            entry = info.entry_point or "."
            program = str(Path(info.program_directory) / entry) if entry != "." else info.program_directory
        args = [python, "-u", str(EXEC), "--monitor", request.monitor_address, "--engine", self.engine]
        args += ["--project", request.project, "--stack", request.stack, "--pwd", request.pwd]
        args += ["--dry_run", "true" if request.dryRun else "false", "--parallel", str(request.parallel)]
        if request.organization:
            args += ["--organization", request.organization]
        if info is not None and info.root_directory:
            args += ["--root_directory", info.root_directory]
        if self.tracing:
            args += ["--tracing", self.tracing]
        args += [program, *request.args]
        env = {
            **os.environ,
            **venv_env,
            "PULUMI_CONFIG": json.dumps(dict(request.config)),
            "PULUMI_CONFIG_SECRET_KEYS": json.dumps(list(request.configSecretKeys)),
        }
        if request.loader_target:
            env["PULUMI_LOADER_TARGET"] = request.loader_target
        try:
            # stdout and stderr are the host's own, which the engine reads and shows
            proc = subprocess.Popen(args, cwd=request.pwd or None, env=env)
        except OSError as exc:
            return language_pb2.RunResponse(error=f"could not start {python}: {exc}")
        context.add_callback(lambda: proc.poll() is None and proc.kill())
        code = proc.wait()
        if code == 0:
            return language_pb2.RunResponse()
        if code == BAIL:
            return language_pb2.RunResponse(bail=True)
        return language_pb2.RunResponse(error=f"Program exited with non-zero exit code: {code}")

    def RunPlugin(self, request: Any, context: Any) -> Iterator[Any]:
        info = request.info
        if why := missing_virtualenv(info):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
        python, venv_env = python_for(info)
        if request.kind == "analyzer":
            args = [python, "-u", "-m", "pulumi.policy", *request.args, info.program_directory]
        else:
            args = [python, "-u", info.program_directory, *request.args]
        env = dict(item.split("=", 1) for item in request.env if "=" in item) or dict(os.environ)
        env.update(venv_env)
        try:
            proc = subprocess.Popen(
                args,
                cwd=request.pwd or None,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"could not start {python}: {exc}")
        context.add_callback(lambda: proc.poll() is None and proc.kill())
        for name, chunk in _stream(proc):
            yield language_pb2.RunPluginResponse(**{name: chunk})
        yield language_pb2.RunPluginResponse(exitcode=proc.wait())


def main(argv: list[str]) -> int:
    """``[--logtostderr] [-v=N] [--tracing URL] ENGINE_ADDRESS``: serve, print the port, wait."""
    if not argv or argv[-1].startswith("-"):
        print("usage: pulumi-language-python [flags] ENGINE_ADDRESS", file=sys.stderr)
        return 2
    tracing = None
    for i, arg in enumerate(argv[:-1]):
        if arg == "--tracing" and i + 1 < len(argv) - 1:
            tracing = argv[i + 1]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.max_receive_message_length", 400 * 1024 * 1024)],
    )
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(LanguageHost(argv[-1], tracing), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    # the engine ends its plugins with SIGINT (SIGKILL a while later): stop serving and exit 0, as
    # Pulumi's own hosts do, not with a KeyboardInterrupt traceback the engine shows as diagnostics
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop(None))
    print(port, flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
