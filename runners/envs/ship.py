"""What the runner sends a host so the wrapper can build the job's environment there.

Every host gets the runner's own pip once, zipped (``<envs>/tools/pip-<version>.zip``, 2 MB):
pure Python, so it runs on any host's ``python3`` whatever its platform, where stock Debian
has no pip at all (uv's binary would be 40 MB and for the runner's platform only). A host that
has not built the lock yet and cannot reach its index (``env_via: ssh``, or ``auto`` when the
host's probe fails) gets the lock's wheels too: the runner downloads them for the host's
Python and platform (hash-checked against the lock) and sends what the host's
``<envs>/wheels`` lacks as a tar stream on one command's stdin (not SFTP: a login shell that
prints corrupts SFTP, hmlkit/ssh/shell.py), as ``data_via: ssh`` sends datasets; the wrapper then
installs with ``--no-index``. A warm host costs one command: nothing is sent.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hmlkit.errors import BackendError
from hmlkit.extras import MissingExtra, require
from hmlkit.node.venv import READY
from hmlkit.ssh.shell import tar_feed, untar
from runners.envs.lock import digest_of, python_of

EnvVia = Literal["auto", "index", "ssh"]
PYPI = "https://pypi.org/simple"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hybridml"


def pip_zip() -> Path:
    """The runner's pip as a zip hosts run it from (``python pip.zip/pip``), made once per version."""
    pip = require("pip", "building job environments")
    version = pip.__version__
    target = cache_dir() / f"pip-{version}.zip"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    package = Path(str(pip.__file__)).parent
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(package.parent).as_posix())
    os.replace(tmp, target)
    return target


def place_pip(envs: Path) -> None:
    """This machine is the host (the local target): its envs directory gets the zip by a link.
    A runner without pip has none to give: the job's venv then sees the runner's own packages."""
    try:
        made = pip_zip()
    except MissingExtra:
        return
    tools = envs / "tools"
    tools.mkdir(parents=True, exist_ok=True)
    if not (tools / made.name).exists():
        tmp = tools / f".{made.name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(made, tmp)
        os.replace(tmp, tools / made.name)


@dataclass
class Shipped:
    env: dict[str, str] = field(default_factory=dict)
    """For the job's ``env.sh``: where the wheels sent are (the wrapper installs with no index)."""
    sent_bytes: int = 0


_PROBE = (
    "import json,platform,sys,urllib.request as u\n"
    "ok=True\n"
    "try: u.urlopen(sys.argv[1],timeout=5).close()\n"
    "except Exception: ok=False\n"
    "print(json.dumps({'python':'%d.%d'%sys.version_info[:2],'machine':platform.machine(),"
    "'glibc':platform.libc_ver()[1],'reach':ok}))"
)


def _index(lock: str) -> str:
    for line in lock.splitlines():
        if line.startswith(("--index-url ", "-i ")):
            return line.split(None, 1)[1].strip()
    return PYPI


def stage(pool: Any, host: Any, root: str, lock: str | None, via: EnvVia) -> Shipped:
    """Make sure the host at ``root`` can build ``lock`` (None: only pip is needed)."""
    envs = f"{root}/envs"
    q = shlex.quote(envs)
    key = digest_of(lock) if lock else "-"
    rc, out, err = pool.exec(
        host,
        f"mkdir -p {q}/tools {q}/wheels && cd {q} && ls tools && ls -d {key}/py*/{READY} 2>/dev/null; true",
    )
    if rc != 0:
        raise BackendError(f"{host.label}: cannot prepare {envs}: {(err or out).strip()[-300:]}")
    have = set(out.split())
    shipped = Shipped()
    made = pip_zip()
    if made.name not in have:
        shipped.sent_bytes += _put(pool.runner(host), [made], f"{envs}/tools")
    if not lock or via == "index" or any(h.endswith(READY) for h in have):
        return shipped
    python = python_of(lock) or "python3"
    rc, out, err = pool.exec(host, f"{python} -I -S -c {shlex.quote(_PROBE)} {shlex.quote(_index(lock))}")
    if rc != 0:
        raise BackendError(f"{host.label}: {python} does not run: {(err or out).strip()[-300:]}")
    seen = json.loads(out.strip().splitlines()[-1])
    if via == "auto" and seen["reach"]:
        return shipped
    wheels = download(lock, seen)
    rc, out, _ = pool.exec(host, f"ls {q}/wheels")
    present = set(out.split())
    missing = [w for w in sorted(wheels.glob("*.whl")) if w.name not in present]
    shipped.sent_bytes += _put(pool.runner(host), missing, f"{envs}/wheels")
    shipped.env["HML_ENV_FIND_LINKS"] = f"{envs}/wheels"
    return shipped


def download(lock: str, host: dict[str, Any]) -> Path:
    """The lock's wheels for the host's Python and platform, checked against its hashes, in a
    cache directory of this runner (downloaded once per lock and platform)."""
    plat = f"{host['machine']}-py{host['python']}"
    where = cache_dir() / "wheels" / f"{digest_of(lock)}-{plat}"
    if (where / ".complete").exists():
        return where
    where.mkdir(parents=True, exist_ok=True)
    lock_file = where / "requirements.lock"
    lock_file.write_text(lock)
    platforms = [f"manylinux_{(host['glibc'] or '2.17').replace('.', '_')}_{host['machine']}"]
    platforms += [f"manylinux2014_{host['machine']}", f"linux_{host['machine']}"]
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:"]
    argv += ["--python-version", host["python"], "--implementation", "cp", "--disable-pip-version-check"]
    argv += [a for p in platforms for a in ("--platform", p)]
    argv += ["--dest", str(where), "-r", str(lock_file), "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        said = " ".join(done.stderr.strip().splitlines()[-4:])[-500:]
        raise BackendError(
            f"the runner could not download the environment's wheels for a host without an index "
            f"(python {host['python']}, {host['machine']}): {said}; every pin needs a wheel for it"
        )
    lock_file.unlink()
    (where / ".complete").touch()
    return where


def _put(execute: Any, paths: list[Path], directory: str) -> int:
    """Files into ``directory`` on the host, each whole or not at all: one tar stream through
    ``/bin/sh`` (never SFTP) into a scratch directory beside them, then renamed into place (a
    concurrent builder never sees half a wheel). ``execute``: ``HostPool.runner(host)``."""
    if not paths:
        return 0
    scratch = shlex.quote(f"{directory}/.incoming-{secrets.token_hex(6)}")
    place = f"mv -f {scratch}/* {shlex.quote(directory)}/ && rmdir {scratch}"
    script = f"mkdir {scratch} && {untar(scratch)} && {place} || {{ rm -rf {scratch}; exit 1; }}"
    with ExitStack() as files:
        members = [(p.name, 0o644, p.stat().st_size, files.enter_context(p.open("rb"))) for p in paths]
        rc, _, err = execute(script, timeout=3600, stdin=tar_feed(members))
    if rc != 0:
        raise BackendError(f"cannot send {len(paths)} file(s) to {directory}: {err.strip()[-300:]}")
    return sum(p.stat().st_size for p in paths)
