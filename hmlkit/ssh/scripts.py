"""Shell run on SSH hosts: GPU placement under a host-wide lock, job start, kill (a job's
output and state come over one stream per node: hmlkit/ssh/stream.py).

GPU claims are files ``<root>/gpus/<index>`` holding the claiming job's exec dir; a claim
whose job has an exit code or no live process group is free again, so a job that ends, is
killed, or dies with its host never leaks a GPU, and no release step can be forgotten.
"""

from __future__ import annotations

import shlex

from hmlkit.ssh.shell import untar

_CLAIM_FREE = """
free() {  # is GPU claim file $1 free (absent, or its job is over)?
  [ -f "$1" ] || return 0
  o=$(cat "$1" 2>/dev/null)
  [ -f "$o/exit_code" ] && return 0
  [ -s "$o/pid" ] && kill -0 -"$(cat "$o/pid")" 2>/dev/null && return 1
  return 0
}
total() {  # configured GPU count, else what nvidia-smi sees
  if [ -n "$GPUS" ]; then echo "$GPUS"; elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | grep -c . ; else echo 0; fi
}
"""


def probe(root: str, gpus: int | None) -> str:
    """Prints ``TOTAL <n> FREE <m>`` for placement (a hint; launch decides under the lock)."""
    return f"""ROOT={shlex.quote(root)}; GPUS={"" if gpus is None else gpus}
{_CLAIM_FREE}
t=$(total); f=0; i=0
while [ "$i" -lt "$t" ]; do free "$ROOT/gpus/$i" && f=$((f+1)); i=$((i+1)); done
echo "TOTAL $t FREE $f"
"""


def launch(root: str, exec_dir: str, want: int, gpus: int | None) -> str:
    """Write the job's files, sent on stdin as a tar stream (hmlkit.ssh.shell.tar_feed; private:
    the environment holds secrets), claim ``want`` GPUs and start the wrapper detached, all in
    one command (one round trip) and the claim under the host's lock.

    Prints ``STARTED <devices>`` or ``NOCAPACITY <free>``.
    """
    return f"""set -u; umask 077
ROOT={shlex.quote(root)}; EXEC={shlex.quote(exec_dir)}; WANT={want}; GPUS={"" if gpus is None else gpus}
{untar('"$EXEC"')} || {{ echo "cannot write the files in $EXEC" >&2; exit 1; }}
{_CLAIM_FREE}
mkdir -p "$ROOT/gpus"
exec 9>"$ROOT/gpus/.lock"; flock 9
t=$(total); got=""; n=0; i=0
while [ "$i" -lt "$t" ] && [ "$n" -lt "$WANT" ]; do
  if free "$ROOT/gpus/$i"; then echo "$EXEC" > "$ROOT/gpus/$i"; got="$got,$i"; n=$((n+1)); fi
  i=$((i+1))
done
if [ "$n" -lt "$WANT" ]; then
  for g in $(echo "$got" | tr ',' ' '); do rm -f "$ROOT/gpus/$g"; done
  echo "NOCAPACITY $n"; exit 0
fi
devices=${{got#,}}
[ "$WANT" -gt 0 ] && echo "export CUDA_VISIBLE_DEVICES=$devices" >> "$EXEC/env.sh"
cd "$EXEC" || exit 1
nohup setsid bash "$EXEC/job.sh" >> "$EXEC/output.log" 2>&1 < /dev/null 9>&- &
for _ in $(seq 500); do [ -s "$EXEC/pid" ] && break; sleep 0.01; done
echo "STARTED $devices"
"""


def kill(exec_dir: str) -> str:
    """TERM the job's process group and session, then KILL what is left."""
    e = shlex.quote(exec_dir)
    return f"""p=$(cat {e}/pid 2>/dev/null) || exit 0
[ -n "$p" ] || exit 0
kill -TERM -"$p" 2>/dev/null; pkill -TERM -s "$p" 2>/dev/null
for _ in $(seq 50); do kill -0 -"$p" 2>/dev/null || pgrep -s "$p" >/dev/null || exit 0; sleep 0.1; done
kill -KILL -"$p" 2>/dev/null; pkill -KILL -s "$p" 2>/dev/null; exit 0
"""


def release(root: str, exec_dir: str) -> str:
    """Drop the GPU claims of ``exec_dir`` at once (teardown), under the host's lock."""
    r, e = shlex.quote(root), shlex.quote(exec_dir)
    return (
        f"[ -d {r}/gpus ] || exit 0; exec 9>{r}/gpus/.lock; flock 9; "
        f'for f in {r}/gpus/[0-9]*; do [ -f "$f" ] && [ "$(cat "$f")" = {e} ] && rm -f "$f"; done; exit 0'
    )
