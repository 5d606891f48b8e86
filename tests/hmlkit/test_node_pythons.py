"""What hml runs on hosts needs no newer Python than the oldest a supported distribution ships.

Hosts run the helpers (hmlkit/node) and the snippets hml sends with whatever ``python3`` they
have: 3.6 on RHEL/Rocky/Alma 8. Two checks: ``vermin`` reads every file and snippet and names
any syntax, module or call newer than ``MIN_PYTHON``; then every interpreter this machine has
(pyenv's versions, the distribution's) loads each file and runs the output filter, since a
static check cannot see everything: vermin skips annotations (a function's local ones are
never evaluated), and loading the file evaluates every one that is (signatures, class and
module level) under the old interpreter itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hmlkit.node import jobscript
from hmlkit.ssh import preflight, staging
from tests.hmlkit.test_node_files import NODE, SHIPPED
from tests.runners.test_hosts import interpreters

MIN = ".".join(map(str, preflight.MIN_PYTHON))
SNIPPETS = {
    "relay_boot.py": jobscript.RELAY_BOOT,
    "relay_pending.py": jobscript._PENDING,
    "assemble.py": staging._ASSEMBLE,
    "version.py": preflight._VERSION,
}
"""The Python hml sends to hosts inline (``python3 -c``), beside the shipped files."""


def test_shipped_files_and_snippets_need_no_newer_python_than_the_minimum(tmp_path: Path):
    for name, code in SNIPPETS.items():
        (tmp_path / name).write_text(code)
    files = [str(NODE / name) for name in SHIPPED] + [str(tmp_path / name) for name in SNIPPETS]
    vermin = Path(sys.executable).with_name("vermin")
    out = subprocess.run(
        [str(vermin), "-q", f"-t={MIN}-", "--violations", "--no-tips", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"needs a Python newer than {MIN}:\n{out.stdout}{out.stderr}"


def test_vermin_catches_what_an_old_host_lacks(tmp_path: Path):
    """The check above can fail: a 3.8 call is reported."""
    newer = tmp_path / "newer.py"
    newer.write_text("import socket\nsocket.create_server(('127.0.0.1', 0))\n")
    vermin = Path(sys.executable).with_name("vermin")
    out = subprocess.run(
        [str(vermin), "-q", f"-t={MIN}-", "--violations", "--no-tips", str(newer)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "socket.create_server" in out.stdout


LOAD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("shipped", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
"""

PYTHONS = {v: p for v, p in interpreters().items() if v[:2] >= preflight.MIN_PYTHON}


def test_the_machine_has_the_oldest_supported_python():
    found = sorted(PYTHONS)
    assert found[0][:2] == preflight.MIN_PYTHON, f"no Python {MIN} here (found {found}); pyenv install {MIN}"


@pytest.mark.parametrize(
    "python", sorted(PYTHONS.values()), ids=[".".join(map(str, v)) for v in sorted(PYTHONS)]
)
def test_every_helper_loads_and_the_filter_runs_under_each_python(python: str, tmp_path: Path):
    for name in SHIPPED:
        out = subprocess.run(
            [python, "-I", "-S", "-W", "error", "-c", LOAD, str(NODE / name)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert out.returncode == 0, f"{name} under {python}:\n{out.stderr}"
    for name, code in SNIPPETS.items():
        out = subprocess.run(
            [python, "-I", "-S", "-c", f"compile({code!r}, {name!r}, 'exec')"], capture_output=True, text=True
        )
        assert out.returncode == 0, f"{name} under {python}:\n{out.stderr}"
    redacted = subprocess.run(
        [python, "-I", "-S", str(NODE / "redact_stream.py"), "TOKEN"],
        input="the token is s3cr3t-value\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={"TOKEN": "s3cr3t-value"},
    )
    assert redacted.returncode == 0, redacted.stderr
    assert "s3cr3t-value" not in redacted.stdout and "the token is" in redacted.stdout
