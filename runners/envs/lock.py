"""``environment:`` resolved once, at submit, into a lock every host builds exactly.

The lock is a pip requirements file with a hash for every file of every pin (``pip install
--require-hashes --no-deps`` on the host; uv reads it too), first line ``# hml environment:
python=3.11`` (or ``python=any``), so its digest also names the interpreter. Resolution is
input checking: a requirement no index can satisfy is refused here (exit 2), before a run
exists. uv resolves universally (every platform and Python from ``environment.python``, else
``PYTHON_FLOOR``, up), so a laptop's resolution builds on a Linux GPU host. The lock goes into
the run's directory (a retry builds the same) and to MLflow (``hml env show``, ``--env-of``).
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

from hmlkit.errors import SpecError
from hmlkit.extras import require
from hmlkit.node.venv import REPORT, digest
from runners.envs.model import Environment

LOCK_FILE = "env.lock"
ARTIFACT = "hml/env.lock"
HEADER = "# hml environment: python="
PYTHON_FLOOR = "3.10"
"""The oldest Python a lock without ``environment.python`` is resolved for (3.10: Ubuntu 22.04)."""
DEFAULT_INDEX = "--index-url https://pypi.org/simple"
UV_TIMEOUT_S = 600


def python_of(text: str) -> str | None:
    """The interpreter the lock asks hosts for (``python3.11``), None for their ``python3``."""
    first = text.partition("\n")[0]
    version = first.removeprefix(HEADER) if first.startswith(HEADER) else "any"
    return None if version == "any" else f"python{version}"


def digest_of(text: str) -> str:
    return digest(text.encode())


def _uv(args: list[str], source: str, field: str, cwd: Path, stdin: str = "") -> str:
    uv = require("uv", "environment: in a job file").find_uv_bin()
    try:
        done = subprocess.run(
            [uv, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=UV_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise SpecError(source, [f"{field}: uv did not resolve it within {UV_TIMEOUT_S} s"]) from None
    if done.returncode != 0:
        said = [ln.strip() for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise SpecError(source, [f"{field}: cannot be resolved: {' '.join(said[-6:])[-800:]}"])
    return done.stdout


def _pylock(path: Path, source: str) -> str:
    """PEP 751's ``pylock.toml`` as pinned requirements with hashes (its wheels' and sdist's)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(source, [f"environment.lock: {path}: {exc}"]) from None
    lines = []
    for pkg in data.get("packages", []):
        files = [*pkg.get("wheels", []), *([pkg["sdist"]] if "sdist" in pkg else [])]
        hashes = sorted({f"sha256:{f['hashes']['sha256']}" for f in files if "sha256" in f.get("hashes", {})})
        if "version" not in pkg or not hashes:
            raise SpecError(
                source,
                [
                    f"environment.lock: {pkg.get('name')!r} has no version or no sha256 hashes (a vcs or "
                    "directory package); lock it from an index, or use requirements"
                ],
            )
        marker = f" ; {pkg['marker']}" if pkg.get("marker") else ""
        lines.append(f"{pkg['name']}=={pkg['version']}{marker} " + " ".join(f"--hash={h}" for h in hashes))
    return "\n".join(sorted(lines)) + "\n"


def resolve(env: Environment, job_file: str | Path) -> str:
    """The lock's text for ``env`` (files relative to ``job_file``); SpecError (exit 2) when it
    names a file that is not there or a requirement no index satisfies."""
    source, here = str(job_file), Path(job_file).resolve().parent
    python = env.python or PYTHON_FLOOR
    compile_ = ["pip", "compile", "--universal", "--generate-hashes", "--python-version", python]
    compile_ += ["--no-header", "--no-annotate", "--emit-index-url", "--quiet"]
    if env.packages is not None:
        listed = "".join(f"{p}\n" for p in env.packages)
        body = _uv([*compile_, "-"], source, "environment.packages", here, listed)
    elif env.requirements is not None:
        path = here / env.requirements
        if not path.is_file():
            raise SpecError(source, [f"environment.requirements: {path} is not a file"])
        body = _uv([*compile_, str(path)], source, "environment.requirements", here)
    else:
        path = here / str(env.lock)
        if not path.is_file():
            raise SpecError(source, [f"environment.lock: {path} is not a file"])
        if path.name == "uv.lock":  # its project beside it; the project's own code is the workdir's
            args = ["export", "--frozen", "--format", "requirements.txt", "--no-emit-project"]
            body = _uv(
                [*args, "--no-header", "--no-annotate", "--quiet"], source, "environment.lock", path.parent
            )
        else:
            body = _pylock(path, source)
    # the default index goes unsaid: each host then uses its own (a mirror its pip.conf names)
    pins = [ln for ln in body.splitlines() if ln.strip() != DEFAULT_INDEX and not ln.startswith("#")]
    return f"{HEADER}{env.python or 'any'}\n" + "\n".join(pins).strip() + "\n"


def save(run_dir: Path, text: str | None) -> None:
    if text is not None:
        (run_dir / LOCK_FILE).write_text(text)


def load(run_dir: Path) -> str | None:
    try:
        return (run_dir / LOCK_FILE).read_text()
    except FileNotFoundError:
        return None


def seen_tags(output: str) -> dict[str, str]:
    """Run tags from the wrapper's environment reports in a job's output (``venv.REPORT``, one
    per node and attempt): the Python and CUDA driver the job saw, and what building cost."""
    tags: dict[str, str] = {}
    for line in output.splitlines():
        _, found, said = line.partition(REPORT)
        if not found:
            continue
        try:
            report = json.loads(said)
        except ValueError:
            continue
        for key in ("python", "cuda", "built_s", "env_s"):
            if report.get(key) not in (None, ""):
                tags[f"hml.env.{key}"] = str(report[key])
    return tags
