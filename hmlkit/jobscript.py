"""The shell wrapper every backend runs: the same files on a laptop, an SSH host or a VM.

The wrapper runs ``setup`` then ``run`` in the workdir with everything they print piped
through ``redact.py`` (secret values replaced before a byte is written), and leaves
``exit_code`` next to ``output.log``, so whoever looks later (a new ``hml`` process, after a
dropped connection) learns the real outcome from the files alone.
"""

from __future__ import annotations

import shlex
from pathlib import Path

WRAPPER = "job.sh"
ENV_FILE = "env.sh"
OUTPUT = "output.log"
EXIT_CODE = "exit_code"
PID = "pid"
REDACTOR = "redact.py"


def env_lines(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in sorted(env.items()))


def render(
    exec_dir: str, workdir: str, setup: str | None, run: str, run_id: str, secret_names: list[str]
) -> dict[str, str]:
    """Files to place in ``exec_dir`` (besides ``env.sh``, written 0600 by the backend).

    ``secret_names``: the variables of ``env.sh`` whose values never reach ``output.log``.
    """
    q_exec, q_work = shlex.quote(exec_dir), shlex.quote(workdir)
    names = " ".join(shlex.quote(n) for n in sorted(secret_names))
    wrapper = f"""#!/usr/bin/env bash
# hybridml job wrapper for run {run_id}
EXEC={q_exec}
echo $$ > "$EXEC/{PID}"
set -a; . "$EXEC/{ENV_FILE}"; set +a; rm -f "$EXEC/{ENV_FILE}"
finish() {{ echo "$1" > "$EXEC/{EXIT_CODE}.tmp"; mv "$EXEC/{EXIT_CODE}.tmp" "$EXEC/{EXIT_CODE}"; exit "$1"; }}
command -v python3 >/dev/null || {{ echo "hml: this host lacks python3" >> "$EXEC/{OUTPUT}"; finish 127; }}
job() {{
  cd {q_work} || {{ echo "hml: workdir {q_work} is missing"; return 127; }}
  if [ -f "$EXEC/setup.sh" ]; then
    bash -e "$EXEC/setup.sh" < /dev/null; rc=$?
    if [ "$rc" -ne 0 ]; then echo "hml: setup failed with exit code $rc"; return "$rc"; fi
  fi
  bash "$EXEC/run.sh" < /dev/null
}}
job 2>&1 | python3 -I -S "$EXEC/{REDACTOR}" {names} >> "$EXEC/{OUTPUT}"
finish "${{PIPESTATUS[0]}}"
"""
    files = {
        WRAPPER: wrapper,
        REDACTOR: Path(__file__).with_name("redact_stream.py").read_text(),
        "run.sh": run.rstrip() + "\n",
    }
    if setup:
        files["setup.sh"] = setup.rstrip() + "\n"
    return files
