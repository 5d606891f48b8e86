"""The files shipped to hosts run under a bare interpreter: ``python3 -I -S``, standard library only.

Hosts have whatever ``python3`` their distribution ships and none of our dependencies, so each
shipped file must load with site-packages off and isolation on. The import-linter contract keeps
them from importing the rest of hybridml; this test keeps them from importing anything that is
not in the standard library, by loading each one in the distribution's own interpreter and
listing what it imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parents[2] / "hmlkit" / "node"
SHIPPED = [
    "relay.py",
    "redact_stream.py",
    "follow_stream.py",
    "sysmetrics.py",
    "datafetch.py",
    "venv.py",
    "session.py",
]
PYTHON3 = shutil.which("python3", path="/usr/bin:/bin") or "python3"

# Load the file as a module (not as __main__, so it only defines), then report every module
# that is loaded and is not the standard library's.
PROBE = """
import sys, json, importlib.util
spec = importlib.util.spec_from_file_location("shipped", sys.argv[1])
module = sys.modules["shipped"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
names = {m.split(".")[0] for m in sys.modules}
foreign = sorted(n for n in names if n not in sys.stdlib_module_names and n not in ("shipped", "__main__"))
print(json.dumps({"foreign": foreign, "path": sys.path}))
"""


def test_every_file_the_wrapper_ships_is_listed():
    """A new file in hmlkit/node that is shipped (a .py besides the builder) is checked here."""
    on_disk = {p.name for p in NODE.glob("*.py")} - {"__init__.py", "jobscript.py"}
    assert on_disk == set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_loads_under_a_bare_interpreter(name: str, tmp_path: Path):
    out = subprocess.run(
        [PYTHON3, "-I", "-S", "-c", PROBE, str(NODE / name)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["foreign"] == [], f"{name} imports outside the standard library: {report['foreign']}"
    assert not any("site-packages" in p or "dist-packages" in p for p in report["path"])
