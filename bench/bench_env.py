"""A job's Python environment per attempt: hml's (built once per host from the lock, then only a
venv of the attempt's own) against ``python -m venv`` + ``pip install -r`` in ``setup``.

    .venv/bin/python bench/bench_env.py [--packages requests==2.32.3 ...] [--python /usr/bin/python3]

The host is this machine's Debian ``python3`` (PEP 668), running exactly what the wrapper runs
(``hmlkit/node/venv.py`` under ``python3 -I -S``, pip shipped as the runner's zip). The
packages are resolved once with uv, as ``hml submit`` does (``runners.envs.lock``), from the
index uv is configured with (PyPI by default). Cold: nothing built on the host, pip's cache
empty; warm: the next attempt on the same host (goal: <= 0.2 s). The baseline runs the same
lock with ``python3 -m venv`` and its pip in a new directory per attempt, cold (empty pip
cache) and warm (pip's cache filled). Also shown: installing the cold lock with uv's binary
instead of the shipped pip (what uv would gain), and what each installer costs to ship.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _common import report  # noqa: E402

from runners.envs.lock import resolve  # noqa: E402
from runners.envs.model import Environment  # noqa: E402
from runners.envs.ship import pip_zip  # noqa: E402

NODE = ROOT / "hmlkit" / "node" / "venv.py"


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if out.returncode:
        raise RuntimeError(f"{cmd} exited {out.returncode}: {(out.stdout + out.stderr)[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", nargs="+", default=["requests==2.32.3"])
    parser.add_argument("--python", default="/usr/bin/python3")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    lock = resolve(Environment(packages=args.packages), ROOT / "job.yaml")
    pins = sum(1 for line in lock.splitlines() if "==" in line)
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        (tmp / "env.lock").write_text(lock)
        envs = tmp / "envs"
        (envs / "tools").mkdir(parents=True)
        shipped = pip_zip()
        (envs / "tools" / shipped.name).symlink_to(shipped)
        base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        base |= {k: v for k, v in os.environ.items() if k in ("SSL_CERT_FILE", "HTTPS_PROXY", "https_proxy")}
        cold_env = {**base, "PIP_CACHE_DIR": str(tmp / "cache-cold")}
        warm_env = {**base, "PIP_CACHE_DIR": str(tmp / "cache-warm")}

        def hml_attempt(n: str, env: dict[str, str]) -> float:
            (tmp / n).mkdir()
            return timed(
                [args.python, "-I", "-S", str(NODE), str(tmp / n), str(envs), str(tmp / "env.lock")], env
            )

        def baseline(n: str, env: dict[str, str]) -> float:
            venv = tmp / n / "venv"
            return timed(
                ["bash", "-ec", f"{args.python} -m venv {venv}; {venv}/bin/pip install -q -r {tmp}/env.lock"],
                env,
            )

        hml_cold = hml_attempt("h0", cold_env)
        hml_warm = statistics.median(hml_attempt(f"h{i + 1}", cold_env) for i in range(args.repeat))
        base_cold = baseline("b0", {**base, "PIP_CACHE_DIR": str(tmp / "cache-base")})
        baseline("b1", warm_env)  # fills pip's cache
        base_warm = statistics.median(baseline(f"b{i + 2}", warm_env) for i in range(args.repeat))
        uv_venv = tmp / "uv-env"
        subprocess.run(
            [
                args.python,
                "-I",
                "-S",
                "-c",
                f"import sys; sys.path[0]={str(NODE.parent)!r}; "
                f"import venv as v; v.make_venv({str(uv_venv)!r}, [])",
            ],
            check=True,
        )
        from uv import find_uv_bin

        uv_cold = timed(
            [
                find_uv_bin(),
                "pip",
                "install",
                "--no-deps",
                "--require-hashes",
                "-q",
                "--python",
                str(uv_venv / "bin" / "python"),
                "-r",
                str(tmp / "env.lock"),
            ],
            {**base, "UV_CACHE_DIR": str(tmp / "uv-cache")},
        )
    print(f"lock: {', '.join(args.packages)} ({pins} pinned packages), host python {args.python}")
    report(
        "environment time per attempt (baseline: python -m venv + pip install -r in setup)",
        [
            ("cold: first attempt on a host, empty pip cache", hml_cold, base_cold),
            (f"warm: a later attempt (median of {args.repeat}; goal <= 0.2 s)", hml_warm, base_warm),
        ],
    )
    print(f"hml is {base_cold / hml_cold:.1f}x faster cold and {base_warm / hml_warm:.0f}x faster warm")
    report("installer for a cold build (baseline: the shipped pip zip)", [("uv binary", uv_cold, hml_cold)])
    uv_size = Path(find_uv_bin()).stat().st_size
    print(
        f"\nshipped once per host: pip zip {shipped.stat().st_size / 1e6:.1f} MB (any platform); "
        f"uv binary {uv_size / 1e6:.1f} MB (this runner's platform only)"
    )


if __name__ == "__main__":
    main()
