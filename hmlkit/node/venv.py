"""The job's own Python environment on the host, made by the wrapper before ``setup`` runs.

    python3 -I -S venv.py EXEC ENVS [LOCK]

Every attempt gets a virtual environment of its own, ``EXEC/venv`` (PEP 405: a ``pyvenv.cfg``
and a link to the interpreter, made by hand in a millisecond; ``python -m venv`` takes 0.1 s
and Debian's lacks ensurepip). It sees the system's packages (a GPU image's CUDA torch is not
downloaded again), so ``python`` exists and ``setup``'s ``pip install`` goes into it, past PEP
668's ``externally-managed-environment``. A job with a locked environment (``LOCK``: pinned
requirements with hashes, resolved once at submit) also sees ``ENVS/<digest>/py<X.Y>``: that
lock built once per host, whoever comes first building it under ``<digest>/py<X.Y>.lock``
while the others wait; it is complete when its ``.hml-ready`` appears (renamed into place),
so a warm host installs nothing. Packages come from the lock's index, or with
``HML_ENV_FIND_LINKS`` from wheels the runner sent over SSH (``--no-index``). pip is the one
shipped from the runner (``ENVS/tools/pip-*.zip``, any platform), else the host's own.

Last it prints one line the runner reads back into the run's tags (``REPORT``): the digest,
the Python and the CUDA driver the job saw, and what the environment cost. Standard library
only, like every file shipped to hosts.
"""

import fcntl
import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

REPORT = "hml: environment "
READY = ".hml-ready"
DIGEST_CHARS = 16


def digest(text: bytes) -> str:
    """The lock's content address: its directory under ENVS and its ``hml.env.digest`` tag."""
    return hashlib.sha256(text).hexdigest()[:DIGEST_CHARS]


def _layered() -> "list[str]":
    """Site directories of the interpreter we run under when it is itself a virtual environment
    (the runner's own, for the local target): a new venv over its base would lose them."""
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    for prefix in (bin_dir, os.path.dirname(bin_dir)):  # PEP 405: pyvenv.cfg beside or above
        if os.path.isfile(os.path.join(prefix, "pyvenv.cfg")):  # (-S: sys.prefix is the base's)
            return [p for p in [_site_dir(prefix)] if os.path.isdir(p)]
    return []


def _site_dir(env: str) -> str:
    return os.path.join(env, "lib", "python{}.{}".format(*sys.version_info[:2]), "site-packages")


def make_venv(env: str, paths: "list[str]") -> None:
    """A PEP 405 environment at ``env`` over this interpreter's base, system packages visible,
    ``paths`` importable after its own (a ``.pth``), and ``pip`` that installs into it."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    version = "{}.{}".format(*sys.version_info[:2])
    os.makedirs(os.path.join(env, "bin"), exist_ok=True)
    os.makedirs(_site_dir(env), exist_ok=True)
    with open(os.path.join(env, "pyvenv.cfg"), "w") as fh:
        fh.write(
            f"home = {os.path.dirname(base)}\ninclude-system-site-packages = true\n"
            f"version = {'.'.join(map(str, sys.version_info[:3]))}\n"
        )
    for name in ("python", "python3", "python" + version):
        link = os.path.join(env, "bin", name)
        if not os.path.lexists(link):
            os.symlink(base, link)
    if paths:
        with open(os.path.join(_site_dir(env), "_hml_layers.pth"), "w") as fh:
            fh.write("".join(p + "\n" for p in paths))
    for name in ("pip", "pip3"):
        shim = os.path.join(env, "bin", name)
        with open(shim, "w") as fh:
            fh.write('#!/bin/sh\nexec "$(dirname "$0")/python" -m pip "$@"\n')
        os.chmod(shim, 0o700)  # the job's login alone runs it, as every file of the run


def _pip_zip(envs: str) -> "str | None":
    found = sorted(glob.glob(os.path.join(envs, "tools", "pip-*.zip")))
    return found[-1] if found else None


def _pip(python: str, envs: str) -> "list[str]":
    """How to run pip for ``python``: the shipped zip, else the host's pip module, else none."""
    shipped = _pip_zip(envs)
    if shipped:
        return [python, os.path.join(shipped, "pip")]
    probe = subprocess.run(  # noqa: UP022  (capture_output= is 3.7+: hosts may have 3.6)
        [python, "-c", "import pip"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if probe.returncode == 0:
        return [python, "-m", "pip"]
    raise SystemExit(
        "hml: this host has no pip to build the job's environment with; let the runner ship it "
        "(an ssh, slurm or aws target does), or install python3-pip on the host"
    )


def build(envs: str, lock: str) -> "tuple[str, str, float]":
    """``(digest, environment, seconds spent installing)``: 0 when the host had it already."""
    with open(lock, "rb") as fh:
        key = digest(fh.read())
    home = os.path.join(envs, key)
    env = os.path.join(home, "py{}.{}".format(*sys.version_info[:2]))
    if os.path.exists(os.path.join(env, READY)):
        return key, env, 0.0
    os.makedirs(home, exist_ok=True)
    started = time.monotonic()
    with open(env + ".lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one builder per digest on this host; the others wait
        if os.path.exists(os.path.join(env, READY)):
            return key, env, 0.0  # built meanwhile by the job we waited for
        print(f"hml: environment {key}: building it on this host (once)", flush=True)
        shutil.rmtree(env, ignore_errors=True)  # a builder that died left it half made
        make_venv(env, _layered())
        shutil.copyfile(lock, os.path.join(home, "requirements.lock"))
        argv = _pip(os.path.join(env, "bin", "python"), envs) + [
            "install",
            "--no-deps",
            "--require-hashes",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            "-r",
            lock,
        ]
        wheels = os.environ.get("HML_ENV_FIND_LINKS")
        if wheels:  # sent by the runner: this host does not use an index
            argv += ["--no-index", "--find-links", wheels]
        code = subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
        if code != 0:
            shutil.rmtree(env, ignore_errors=True)
            raise SystemExit(f"hml: environment {key}: pip could not install the lock (exit {code})")
        open(os.path.join(env, READY + ".tmp"), "w").close()
        os.rename(os.path.join(env, READY + ".tmp"), os.path.join(env, READY))
    return key, env, time.monotonic() - started


def cuda_driver() -> str:
    """The CUDA version the host's driver offers (``cuDriverGetVersion``), '' without one; only
    asked where a driver is loaded, so a CPU host pays nothing."""
    if not os.path.exists("/proc/driver/nvidia/version"):
        return ""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
        out = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(out)) != 0:
            return ""
    except OSError:
        return ""
    return f"{out.value // 1000}.{out.value % 1000 // 10}"


def main(argv: "list[str]") -> int:
    started = time.monotonic()
    exec_dir, envs = os.path.abspath(argv[0]), os.path.abspath(argv[1])
    lock = os.path.abspath(argv[2]) if len(argv) > 2 else ""
    layers = _layered()
    key, env, built = build(envs, lock) if lock else ("", "", 0.0)
    venv = os.path.join(exec_dir, "venv")
    shipped = _pip_zip(envs)
    make_venv(venv, ([_site_dir(env)] if env else []) + layers + ([shipped] if shipped else []))
    path = os.path.join(venv, "bin") + (":" + os.path.join(env, "bin") if env else "")
    with open(os.path.join(exec_dir, "venv.sh"), "w") as fh:
        fh.write(
            f'export VIRTUAL_ENV={shlex.quote(venv)}\nexport PATH={shlex.quote(path)}:"$PATH"\n'
            "unset PYTHONHOME\n"
        )
    report = {
        "digest": key,
        "python": ".".join(map(str, sys.version_info[:3])),
        "cuda": cuda_driver(),
        "built_s": round(built, 3),
        "env_s": round(time.monotonic() - started, 3),
    }
    print(REPORT + json.dumps(report, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
