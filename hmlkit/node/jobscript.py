"""The shell wrapper every backend runs: the same files on a laptop, an SSH host or a VM.

The wrapper runs ``setup`` then ``run`` in the workdir with everything they print piped
through ``redact.py`` (secret values replaced before a byte is written), and leaves
``exit_code`` next to ``output.log``, so whoever looks later (a new ``hml`` process, after a
dropped connection) learns the real outcome from the files alone.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from hmlkit.node.relay import CREDENTIALS

WRAPPER = "job.sh"
ENV_FILE = "env.sh"
OUTPUT = "output.log"
EXIT_CODE = "exit_code"
PID = "pid"
REDACTOR = "redact.py"
FOLLOWER = "follow.py"
RELAY = "relay.py"
SYSMETRICS = "sysmetrics.py"
VENV = "venv.py"
LOCK = "env.lock"
ENVS = "$HOME/.cache/hybridml/envs"
"""Where a host keeps its built environments when the target names no place (``<remote_root>/envs``)."""
RELAY_JOURNAL = "relay-journal"
SYNCING = "syncing"
PYTHON = "HML_PYTHON"
"""The interpreter the wrapper runs hml's helpers with (default ``python3``)."""
RELAY_UPSTREAM = "HML_RELAY_UPSTREAM"
"""Where the relay sends writes when not to the tracking URI itself (tracking_via: runner)."""
RELAY_CREDENTIALS = "HML_RELAY_CREDENTIALS"
"""In ``env.sh`` only: the tracking server's credentials as ``NAME=VALUE`` shell words. The
wrapper takes it out of the environment before anything starts and hands it to the relay on
its stdin, so the job and its children never hold the server's credentials; the job holds
only its own ``MLFLOW_TRACKING_TOKEN``, which its relay alone accepts."""

FAST_LOGGING = {"MLFLOW_DISABLE_TELEMETRY": "true"}
"""For the job's MLflow client once its relay runs. Telemetry off, and ``MLFLOW_REGISTRY_URI``
set to the relay (MLflow's own default), spare each ``log_metric`` the client's work around
them (without a registry URI it tries to import pyspark anew on every call). A value the job's
``envs`` set wins."""
_FAST_LOGGING_EXPORTS = " ".join(f'{k}="${{{k}:-{v}}}"' for k, v in FAST_LOGGING.items())
BUFFER = "hml_mlflow_buffer.py"
"""The job's MLflow client logs metrics in the background through this store (plugin/BUFFER,
whose docstring says how MLflow loads it); ``TRACKING_FAST_LOGGING=0`` in the job's ``envs`` keeps
MLflow's own, one request per call. docs/relay.md ("The fast path")."""
_BUFFER_META = "hml_mlflow_buffer-1.dist-info"
_BUFFER_ENTRY_POINTS = """[mlflow.tracking_store]
http = hml_mlflow_buffer:build
[mlflow.artifact_repository]
mlflow-artifacts = hml_mlflow_buffer:mlflow_artifacts_repo
http = hml_mlflow_buffer:http_artifact_repo
https = hml_mlflow_buffer:http_artifact_repo
"""
"""The relay's URI gets the buffered store; artifact uploads send the buffered metrics first."""


RELAY_BOOT = (
    "import socket,sys\n"
    "s=socket.socket()\n"
    "s.bind(('127.0.0.1',0))\n"
    "s.listen(128)\n"
    "print('{\"port\": %d}' % s.getsockname()[1], flush=True)\n"
    "sys.path[0]=sys.argv[1]\n"
    "import relay\n"
    "relay.main(sys.argv[2:], listener=s)\n"
)
"""``python3 -I -S -c RELAY_BOOT EXEC ARGS...``: listen and say the port (milliseconds), then load
relay.py from EXEC (its bytecode cached there) and serve on that socket."""
_PENDING = (
    "import json,os,sys,urllib.request as u; print(json.load(u.urlopen(u.Request(sys.argv[1], headers="
    '{"Authorization": "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]}), timeout=5))[sys.argv[2]])'
)
_RELAY_FUNCTIONS = f"""# the job logs through a journaling relay (hmlkit/node/relay.py) beside it, so a
# tracking server that is down or slow loses none of its metrics; the job's end waits until
# they are home (TRACKING_RELAY_DRAIN_S, default 3600, bounds the wait)
relay_status() {{  # relay_status [FIELD]: the relay's backlog, or another field of its status
  "$PY" -I -S -c '{_PENDING}' "http://127.0.0.1:$RELAY_PORT/_relay/status" "${{1:-pending}}" 2>/dev/null ||
    echo unknown
}}
relay_start() {{
  case "$MLFLOW_TRACKING_URI" in http://*|https://*) ;; *) return 0 ;; esac
  # the relay says its port before it loads (RELAY_BOOT): the job does not wait for that; the
  # server's credentials reach it on stdin only (never an argument, never the job's environment)
  "$PY" -I -S -c {shlex.quote(RELAY_BOOT)} "$EXEC" \\
    --upstream "${{{RELAY_UPSTREAM}:-$MLFLOW_TRACKING_URI}}" --journal "$EXEC/{RELAY_JOURNAL}" \\
    --credentials-stdin --redact "$@" <<< "$RELAY_CREDENTIALS" \\
    > "$EXEC/relay.out" 2>> "$EXEC/relay.log" &
  RELAY_PID=$!
  for _ in $(seq 1000); do
    RELAY_PORT=$(sed -n 's/.*"port": *\\([0-9]*\\).*/\\1/p' "$EXEC/relay.out" 2>/dev/null)
    [ -n "$RELAY_PORT" ] && break
    kill -0 "$RELAY_PID" 2>/dev/null || break
    sleep 0.01
  done
  if [ -z "$RELAY_PORT" ]; then
    echo "hml: no tracking relay (see $EXEC/relay.log); the job logs directly" >> "$EXEC/{OUTPUT}"
    # without its relay the job presents the server's credentials itself, as MLflow's client does
    [ -n "$RELAY_CREDENTIALS" ] && eval "export $RELAY_CREDENTIALS"
    RELAY_PID=""; unset RELAY_CREDENTIALS; return 0
  fi
  unset RELAY_CREDENTIALS
  export MLFLOW_TRACKING_URI="http://127.0.0.1:$RELAY_PORT"
  export {_FAST_LOGGING_EXPORTS} MLFLOW_REGISTRY_URI="${{MLFLOW_REGISTRY_URI:-$MLFLOW_TRACKING_URI}}"
  export HML_RELAY_URI="$MLFLOW_TRACKING_URI"
  if [ "${{TRACKING_FAST_LOGGING:-1}}" != 0 ]; then  # the job's metrics go in the background ({BUFFER})
    mkdir -p "$EXEC/mlflow-plugin/{_BUFFER_META}" && cp "$EXEC/{BUFFER}" "$EXEC/mlflow-plugin/" &&
      printf 'Metadata-Version: 2.1\\nName: hml-mlflow-buffer\\nVersion: 1\\n' \\
        > "$EXEC/mlflow-plugin/{_BUFFER_META}/METADATA" &&
      printf '%s' {shlex.quote(_BUFFER_ENTRY_POINTS)} \\
        > "$EXEC/mlflow-plugin/{_BUFFER_META}/entry_points.txt" &&
      export PYTHONPATH="$EXEC/mlflow-plugin${{PYTHONPATH:+:$PYTHONPATH}}"
  fi
  # this node's CPU, memory and GPUs into the run, through the relay (hmlkit/node/sysmetrics.py)
  if [ -n "$MLFLOW_RUN_ID" ] && [ "${{TRACKING_SYSTEM_METRICS_S:-5}}" != 0 ]; then
    "$PY" -I -S "$EXEC/{SYSMETRICS}" 2>> "$EXEC/relay.log" & SAMPLER_PID=$!
  fi
}}
relay_drain() {{  # the backlog's size goes to $EXEC/{SYNCING} too, for `hml status`
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null && wait "$SAMPLER_PID" 2>/dev/null
  [ -n "$RELAY_PID" ] || return 0
  # a healthy relay is home within milliseconds of the job's end: look again soon, then each second
  start=$SECONDS; said=-10; pause=0.02; limit="${{TRACKING_RELAY_DRAIN_S:-3600}}"
  while n=$(relay_status); [ "$n" != 0 ]; do
    echo "$n" > "$EXEC/{SYNCING}.tmp"; mv "$EXEC/{SYNCING}.tmp" "$EXEC/{SYNCING}"
    waited=$((SECONDS - start))
    if {{ [ "$pause" = 1 ] || [ "$waited" -ge "$limit" ]; }} && [ $((waited - said)) -ge 10 ]; then
      said=$waited; why=$(relay_status last_error)  # why it is not home yet: the user's to see
      echo "hml: syncing $n records to the tracking server${{why:+ (upstream: $why)}}" >> "$EXEC/{OUTPUT}"
    fi
    if [ "$waited" -ge "$limit" ]; then
      echo "hml: gave up syncing; the records stay in $EXEC/{RELAY_JOURNAL}" >> "$EXEC/{OUTPUT}"
      break
    fi
    sleep "$pause"
    case "$pause" in 0.02) pause=0.1 ;; 0.1) pause=0.3 ;; *) pause=1 ;; esac
  done
  rm -f "$EXEC/{SYNCING}"
  kill "$RELAY_PID" 2>/dev/null; wait "$RELAY_PID" 2>/dev/null
}}"""


def syncing_detail(backlogs: list[str]) -> str:
    """What ``hml status`` shows while the wrapper waits for its relay's journal to drain (the
    contents of each node's ``SYNCING`` file; empty when no node waits). The run turns terminal
    only after every node's wrapper is done waiting, so this is the one visible sign of it."""
    waiting = [b.strip() for b in backlogs if b.strip()]
    if not waiting:
        return ""
    known = [int(b) for b in waiting if b.isdigit()]  # "unknown": the relay did not answer
    return f"syncing {sum(known) if known else 'its'} records to the tracking server"


def env_lines(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in sorted(env.items()))


def render(
    exec_dir: str,
    workdir: str,
    setup: str | None,
    run: str,
    run_id: str,
    secret_names: list[str],
    lock: str | None = None,
    python: str | None = None,
    envs: str = ENVS,
) -> dict[str, str]:
    """Files to place in ``exec_dir`` (besides ``env.sh``, written 0600 by the backend).

    ``secret_names``: the variables of ``env.sh`` whose values never reach ``output.log``.
    ``lock``: the job's locked environment (``venv.py``), built into ``envs`` on the host, by
    ``python`` (``python3.12``; default ``python3``). Every job runs in a venv of its own.
    """
    q_exec, q_work = shlex.quote(exec_dir), shlex.quote(workdir)
    py = shlex.quote(python or "python3")
    q_envs = f'"{ENVS}"' if envs == ENVS else shlex.quote(envs)
    q_lock = f' "$EXEC/{LOCK}"' if lock else ""
    # the server's credentials too: a job whose relay did not start holds them (relay_start)
    names = " ".join(shlex.quote(n) for n in sorted({*secret_names, *CREDENTIALS}))
    wrapper = f"""#!/usr/bin/env bash
# hybridml job wrapper for run {run_id}
EXEC={q_exec}
echo $$ > "$EXEC/{PID}"
set -a; . "$EXEC/{ENV_FILE}"; set +a; rm -f "$EXEC/{ENV_FILE}"
RELAY_CREDENTIALS="${{{RELAY_CREDENTIALS}-}}"; unset {RELAY_CREDENTIALS}  # the relay's alone: relay_start
finish() {{ echo "$1" > "$EXEC/{EXIT_CODE}.tmp"; mv "$EXEC/{EXIT_CODE}.tmp" "$EXEC/{EXIT_CODE}"; exit "$1"; }}
PY="${{{PYTHON}:-python3}}"  # the host's `python:` (hmlkit.ssh.hosts.SshHost) runs hml's helpers
command -v "$PY" >/dev/null || {{ echo "hml: this host lacks $PY" >> "$EXEC/{OUTPUT}"; finish 127; }}
job() {{
  cd {q_work} || {{ echo "hml: workdir {q_work} is missing"; return 127; }}
  # the job's own Python environment (hmlkit/node/venv.py): `python` and `pip` are the venv's
  command -v {py} >/dev/null || {{ echo "hml: this host lacks {py} (environment.python)"; return 127; }}
  {py} -I -S "$EXEC/{VENV}" "$EXEC" {q_envs}{q_lock} < /dev/null || return $?
  . "$EXEC/venv.sh"
  if [ -f "$EXEC/setup.sh" ]; then
    bash -e "$EXEC/setup.sh" < /dev/null; rc=$?
    if [ "$rc" -ne 0 ]; then echo "hml: setup failed with exit code $rc"; return "$rc"; fi
  fi
  bash "$EXEC/run.sh" < /dev/null
}}
{_RELAY_FUNCTIONS}
relay_start {names}
job 2>&1 | "$PY" -I -S "$EXEC/{REDACTOR}" {names} >> "$EXEC/{OUTPUT}"
rc="${{PIPESTATUS[0]}}"
relay_drain
finish "$rc"
"""
    files = {
        WRAPPER: wrapper,
        REDACTOR: Path(__file__).with_name("redact_stream.py").read_text(),
        FOLLOWER: Path(__file__).with_name("follow_stream.py").read_text(),
        RELAY: Path(__file__).with_name("relay.py").read_text(),
        SYSMETRICS: Path(__file__).with_name("sysmetrics.py").read_text(),
        VENV: Path(__file__).with_name("venv.py").read_text(),
        BUFFER: (Path(__file__).parent / "plugin" / BUFFER).read_text(),
        "run.sh": run.rstrip() + "\n",
    }
    if lock:
        files[LOCK] = lock
    if setup:
        files["setup.sh"] = setup.rstrip() + "\n"
    return files
