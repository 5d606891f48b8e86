"""Our language host (tests/pulumihost.py) over gRPC, without the engine: it prints its port,
answers the calls the engine makes, runs a program with the flags and config that
``pulumi-language-python-exec`` parses (a stand-in for that script records them), maps its exit
codes, and streams a plugin's output and exit code."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import language_pb2, language_pb2_grpc

HOST = Path(__file__).resolve().parent / "pulumihost.py"
FAKE_EXEC = """import json, os, sys
record = {"argv": sys.argv[1:], "config": json.loads(os.environ["PULUMI_CONFIG"]),
          "secret_keys": json.loads(os.environ["PULUMI_CONFIG_SECRET_KEYS"]),
          "venv": os.environ.get("VIRTUAL_ENV"), "cwd": os.getcwd()}
open(os.environ["RECORD"], "w").write(json.dumps(record))
sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)
"""


@contextmanager
def _serving(tmp_path: Path, **env: str) -> Iterator[language_pb2_grpc.LanguageRuntimeStub]:
    """The host copied beside a stand-in exec script, serving, in ``env`` (besides a bare PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copyfile(HOST, bin_dir / "pulumihost.py")
    (bin_dir / "pulumi-language-python-exec").write_text(FAKE_EXEC)
    proc = subprocess.Popen(
        [sys.executable, str(bin_dir / "pulumihost.py"), "-v=3", "127.0.0.1:1"],
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield language_pb2_grpc.LanguageRuntimeStub(channel)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[language_pb2_grpc.LanguageRuntimeStub, Path]]:
    record = tmp_path / "record.json"
    with _serving(tmp_path, RECORD=str(record)) as stub:
        yield stub, record


def test_sigint_ends_the_host_quietly(tmp_path: Path) -> None:
    """How the engine ends it: exit 0 and nothing on stderr (a traceback would be shown as the
    stack's diagnostics after every ``pulumi up``)."""
    proc = subprocess.Popen(
        [sys.executable, str(HOST), "127.0.0.1:1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None and int(proc.stdout.readline()) > 0
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (0, "")


def _info(root: Path, **options: str) -> language_pb2.ProgramInfo:
    opts = struct_pb2.Struct()
    opts.update(options)
    return language_pb2.ProgramInfo(
        root_directory=str(root), program_directory=str(root), entry_point=".", options=opts
    )


def test_plugin_info_and_the_no_op_calls(host) -> None:
    stub, _ = host
    assert stub.GetPluginInfo(empty_pb2.Empty()).version == "3.276.0"
    assert stub.Handshake(language_pb2.LanguageHandshakeRequest(engine_address="x")) is not None
    assert not stub.GetRequiredPackages(language_pb2.GetRequiredPackagesRequest()).packages
    assert not stub.GetRequiredPlugins(language_pb2.GetRequiredPluginsRequest()).plugins
    # no virtualenv option: nothing is installed into an interpreter that is not the project's own
    nothing = list(stub.InstallDependencies(language_pb2.InstallDependenciesRequest()))
    assert [r.stderr for r in nothing] == [
        b"no 'virtualenv' runtime option: nothing installed (the interpreter is your own)\n"
    ]
    venv = Path(sys.executable).parent.parent
    about = stub.About(language_pb2.AboutRequest(info=_info(venv, virtualenv=str(venv))))
    assert about.executable == str(venv / "bin" / "python")
    assert about.version == ".".join(map(str, sys.version_info[:3]))
    with pytest.raises(grpc.RpcError) as err:
        stub.GetProgramDependencies(language_pb2.GetProgramDependenciesRequest())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _run(stub, tmp_path: Path, args: tuple[str, ...] = ("a1",)) -> language_pb2.RunResponse:
    venv = Path(sys.executable).parent.parent
    return stub.Run(
        language_pb2.RunRequest(
            project="proj",
            stack="dev",
            pwd=str(tmp_path),
            program=".",
            args=list(args),
            config={"proj:key": "v", "proj:pw": "s3cret"},
            configSecretKeys=["proj:pw"],
            dryRun=True,
            parallel=8,
            monitor_address="127.0.0.1:7",
            organization="org",
            info=_info(tmp_path, virtualenv=str(venv)),
        )
    )


def test_run_passes_the_flags_and_config_the_exec_script_parses(host, tmp_path: Path) -> None:
    stub, record = host
    assert _run(stub, tmp_path) == language_pb2.RunResponse()
    seen = json.loads(record.read_text())
    argv = seen["argv"]
    flags = dict(zip(argv[0:-2:2], argv[1:-2:2], strict=True))
    assert flags == {
        "--monitor": "127.0.0.1:7",
        "--engine": "127.0.0.1:1",
        "--project": "proj",
        "--stack": "dev",
        "--pwd": str(tmp_path),
        "--dry_run": "true",
        "--parallel": "8",
        "--organization": "org",
        "--root_directory": str(tmp_path),
    }
    assert argv[-2:] == [str(tmp_path), "a1"]
    assert seen["config"] == {"proj:key": "v", "proj:pw": "s3cret"}
    assert seen["secret_keys"] == ["proj:pw"]
    assert seen["venv"] == str(Path(sys.executable).parent.parent)
    assert seen["cwd"] == str(tmp_path)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (32, language_pb2.RunResponse(bail=True)),
        (3, language_pb2.RunResponse(error="Program exited with non-zero exit code: 3")),
    ],
)
def test_run_exit_codes(host, tmp_path: Path, code: int, expected: language_pb2.RunResponse) -> None:
    """32: the program has told the user already (a bail); anything else but 0 is an error."""
    stub, _ = host
    assert _run(stub, tmp_path, args=(str(code),)) == expected


def test_run_plugin_streams_output_and_exit_code(host, tmp_path: Path) -> None:
    stub, _ = host
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "__main__.py").write_text(
        "import os, sys\nprint('out', sys.argv[1:], os.environ['X'])\n"
        "print('err', file=sys.stderr)\nsys.exit(3)\n"
    )
    responses = list(
        stub.RunPlugin(
            language_pb2.RunPluginRequest(
                pwd=str(tmp_path),
                args=["--flag", "addr"],
                env=["X=y", "PATH=/usr/bin:/bin"],
                info=_info(plugin, virtualenv=str(Path(sys.executable).parent.parent)),
                kind="resource",
            )
        )
    )
    out = b"".join(r.stdout for r in responses)
    err = b"".join(r.stderr for r in responses)
    assert out == b"out ['--flag', 'addr'] y\n" and err == b"err\n"
    assert responses[-1].exitcode == 3


def _wheel(where: Path, name: str, version: str, module: str) -> Path:
    """A pure-Python wheel, written by hand (no build backend, no index)."""
    files = {f"{name}.py": module.encode()}
    info = f"{name}-{version}.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}"
        for path, data in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    wheel = where / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def _install(stub, pack: Path, **options: str) -> tuple[str, str]:
    responses = list(
        stub.InstallDependencies(
            language_pb2.InstallDependenciesRequest(info=_info(pack, **options), is_plugin=True)
        )
    )
    return b"".join(r.stdout for r in responses).decode(), b"".join(r.stderr for r in responses).decode()


def test_install_dependencies_makes_the_packs_own_virtualenv(tmp_path: Path) -> None:
    """``pulumi install`` in a policy pack: ``venv`` (relative to the pack) made with the base
    interpreter, requirements.txt installed into it with pip's settings from the environment
    (here a wheel directory and no index); again, the virtualenv is kept; a requirement pip
    cannot find fails the call with the command and its exit code."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "hmltiny", "1.0", 'X = "tiny"\n')
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "PulumiPolicy.yaml").write_text("runtime:\n  name: python\n  options:\n    virtualenv: venv\n")
    (pack / "requirements.txt").write_text("hmltiny==1.0\n")
    env = {"PULUMI_PYTHON_CMD": sys.executable, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
    with _serving(tmp_path, **env) as stub:
        out, err = _install(stub, pack, virtualenv="venv", toolchain="pip")
        assert "Creating virtual environment..." in out, (out, err)
        assert "Successfully installed hmltiny-1.0" in out, (out, err)
        assert out.endswith("Finished installing dependencies\n")
        python = pack / "venv" / "bin" / "python"
        seen = subprocess.run(
            [str(python), "-c", "import hmltiny, sys; print(hmltiny.X, sys.prefix != sys.base_prefix)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert seen == ["tiny", "True"]
        # a virtualenv of its own: not the interpreter the host runs with, nor its packages
        assert subprocess.run([str(python), "-c", "import grpc"], capture_output=True).returncode != 0

        again, _ = _install(stub, pack, virtualenv="venv")
        assert "Creating virtual environment" not in again and "already satisfied: hmltiny==1.0" in again

        (pack / "requirements.txt").write_text("hmltiny-not-there==9\n")
        with pytest.raises(grpc.RpcError) as failed:
            _install(stub, pack, virtualenv="venv")
        assert failed.value.code() == grpc.StatusCode.UNKNOWN
        assert failed.value.details() == f"{python} -m pip install -r requirements.txt in {pack} exited 1"

        with pytest.raises(grpc.RpcError) as uv:
            _install(stub, pack, virtualenv="venv", toolchain="uv")
        assert uv.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_missing_virtualenv_says_how_to_make_it(host, tmp_path: Path) -> None:
    """A pack (or program) whose ``virtualenv`` was never made fails with the fix, not with some
    other interpreter."""
    stub, _ = host
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "PulumiPolicy.yaml").write_text("runtime: python\n")
    with pytest.raises(grpc.RpcError) as err:
        list(
            stub.RunPlugin(
                language_pb2.RunPluginRequest(
                    pwd=str(tmp_path), info=_info(pack, virtualenv="venv"), kind="analyzer"
                )
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details().startswith(
        f"The 'virtualenv' option in PulumiPolicy.yaml is set to 'venv', but '{pack}/venv' doesn't exist; "
        f"run `pulumi install` in {pack}"
    )
    program = tmp_path / "program"
    program.mkdir()
    response = stub.Run(
        language_pb2.RunRequest(pwd=str(program), program=".", info=_info(program, virtualenv="v"))
    )
    assert response.error.startswith(
        f"The 'virtualenv' option in Pulumi.yaml is set to 'v', but '{program}/v'"
    )
