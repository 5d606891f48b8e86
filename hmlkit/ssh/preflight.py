"""What a host must have before hml starts anything on it, asked in the placement probe's command.

A host that lacks one of these fails later, and worse: without ``python3`` (or with one older
than the helpers need) the job's follower never starts and the run waited in silence; without
a writable ``remote_root``, or with ``noexec`` on it, staging or a job's own virtualenv fails
half-way. So the probe (hmlkit/ssh/scripts.py) also reports these, and ``problems`` turns the
report into one line per lack, each naming the host and the fix. Nothing here costs a round
trip of its own.
"""

from __future__ import annotations

import shlex

from hmlkit.ssh.hosts import SshHost

MIN_PYTHON = (3, 6)
"""The oldest interpreter hml's host-side helpers (hmlkit/node) run on: the ``python3`` of
RHEL/Rocky/Alma 8, where many clusters still are. CI checks the files against it (vermin)."""
TOOLS = ("bash", "tar", "flock", "setsid", "nohup", "seq", "pkill")
"""Commands the wrapper and the host scripts use besides POSIX sh's own."""
_VERSION = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


def script(python: str) -> str:
    """Shell, run with ``$ROOT`` set to the prepared remote root: prints ``PYTHON <version|none>``,
    ``MISSING <tool>`` per missing tool, ``EXEC ok|noexec`` and ``NVIDIA_SMI yes|no``."""
    return f"""py={shlex.quote(python)}
if command -v "$py" >/dev/null 2>&1; then
  echo "PYTHON $("$py" -c {shlex.quote(_VERSION)} 2>&1 | tail -n 1)"
else echo "PYTHON none"; fi
for t in {" ".join(TOOLS)}; do command -v "$t" >/dev/null 2>&1 || echo "MISSING $t"; done
f="$ROOT/.hml-exec-$$"
if printf '#!/bin/sh\\nexit 0\\n' > "$f" && chmod 700 "$f" && "$f" 2>/dev/null; then echo "EXEC ok"
else echo "EXEC noexec"; fi
rm -f "$f"
if command -v nvidia-smi >/dev/null 2>&1; then echo "NVIDIA_SMI yes"; else echo "NVIDIA_SMI no"; fi
"""


def problems(host: SshHost, root: str, report: str, gpus: int) -> list[str]:
    """What ``report`` (``script``'s output) says the host lacks for a job of ``gpus`` GPUs."""
    said = dict(line.partition(" ")[::2] for line in report.splitlines() if line.strip())
    found: list[str] = []
    version = said.get("PYTHON", "none").strip()
    need = ".".join(map(str, MIN_PYTHON))
    fix_python = (
        f"install Python {need} or newer there, or set python: /path/to/python3 (3.6+) for this host "
        "in the profile"
    )
    if version == "none":
        found.append(f"{host.python} is not on the login's PATH; {fix_python}")
    else:
        try:
            have = tuple(int(x) for x in version.split(".")[:2])
        except ValueError:
            have = ()
        if not have or have < MIN_PYTHON:
            found.append(
                f"{host.python} is {version[:80] or 'unusable'}, hml's helpers need {need}+; {fix_python}"
            )
    missing = [line.split(" ", 1)[1] for line in report.splitlines() if line.startswith("MISSING ")]
    if missing:
        found.append(
            f"missing commands: {', '.join(missing)}; install them there (coreutils, util-linux, tar, bash)"
        )
    if said.get("EXEC", "").strip() == "noexec":
        found.append(
            f"remote_root {root} is on a noexec file system (jobs cannot run programs from it); "
            "set remote_root to a directory on an executable file system"
        )
    if gpus and host.gpus is None and said.get("NVIDIA_SMI", "").strip() == "no":
        found.append(
            f"the job asks for {gpus} GPU(s) and the host has no nvidia-smi; install the NVIDIA "
            "driver there, or set gpus: N for this host if it has GPUs nvidia-smi cannot see"
        )
    return [f"{host.label}: {p}" for p in found]
