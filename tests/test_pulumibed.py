"""tests/pulumibed.py's choices, without building or running anything: where the binaries go,
and that a ``pulumi`` already on PATH is used as it is (only the provider is then built)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests import pulumibed


def test_cache_outside_the_clone_named_by_versions_and_go_files(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HML_K8S_CACHE", str(tmp_path))
    where = pulumibed.bin_dir()
    assert where.parent.parent == tmp_path and where.name == "bin"
    assert where.parent.name.startswith("pulumi-3.276.0-kubernetes4.0.0-20260115-")
    assert not where.is_relative_to(Path(__file__).resolve().parents[1])


def test_a_pulumi_on_path_is_used_and_only_the_provider_is_built(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HML_K8S_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HML_PULUMI_BUILD", raising=False)
    installed = tmp_path / "pulumi-install" / "bin"
    installed.mkdir(parents=True)
    (installed / "pulumi").write_text("#!/bin/sh\necho v3.200.0\n")
    (installed / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{installed}:/usr/bin:/bin")
    assert pulumibed.ambient_pulumi() == str(installed / "pulumi")
    assert pulumibed.needed() == ("pulumi-resource-kubernetes",)
    monkeypatch.setenv("HML_PULUMI_BUILD", "1")
    assert pulumibed.ambient_pulumi() is None
    assert set(pulumibed.needed()) == set(pulumibed.BINARIES)


def test_a_changed_language_host_is_copied_again_and_nothing_rebuilt(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HML_K8S_CACHE", str(tmp_path))
    monkeypatch.setenv("HML_PULUMI_BUILD", "1")
    where = pulumibed.bin_dir()
    where.mkdir(parents=True)
    for name in pulumibed.BINARIES:
        (where / name).write_text("stale")
    assert not pulumibed.built()
    monkeypatch.setattr(pulumibed.shutil, "which", lambda _: "/usr/bin/go")

    def go(args: list[str], cwd: Path, **env: str) -> str:
        assert args[0] == "list", f"nothing is compiled: go {args}"
        return str(tmp_path)  # the sdk/v3 module's directory

    monkeypatch.setattr(pulumibed, "_go", go)
    exec_script = tmp_path / "python" / "cmd" / "pulumi-language-python-exec"
    exec_script.parent.mkdir(parents=True)
    exec_script.write_text("exec")
    pulumibed.build(log=io.StringIO())
    assert pulumibed.built() and pulumibed.bin_dir() == where
    assert (where / "pulumihost.py").read_bytes() == pulumibed.HOST.read_bytes()
    assert (where / "pulumi").read_text() == "stale"  # the Go binaries: not rebuilt


@pytest.mark.parametrize("argv", [["bogus"], []])
def test_bad_command_exits_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        pulumibed.main(argv)
    assert exit_.value.code == 2
    assert "usage: python -m tests.pulumibed" in capsys.readouterr().err


def test_no_go_is_one_line_and_exit_2(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("HML_K8S_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert pulumibed.main(["build"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "pulumibed: the Pulumi engine for the tests needs Go (go1.26): apt-get install golang-go"
    )
    assert not any(tmp_path.iterdir())  # nothing made
