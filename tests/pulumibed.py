"""The real Pulumi engine for the tests: the ``pulumi`` CLI and the Kubernetes resource provider,
built from the Go module proxy, and our own Python language host, with nothing fetched at run
time.

Why real: under Pulumi's mocks no provider ever checks a resource and no engine ever loads the
policy pack. With these binaries ``pulumi up`` runs our components against the Kubernetes bed
(tests/k8sbed.py) and ``pulumi preview --policy-pack`` runs the pack as a reviewer's CI does.

The binaries are built once per machine into ``~/.cache/hybridml/pulumi-<versions>-<digest>/bin``
(``HML_K8S_CACHE`` moves the root, as for the Kubernetes bed), keyed by the pinned versions and
a digest of ``tests/pulumigo/``, one builder at a time (a lock beside the cache). Our language
host is copied again whenever ``tests/pulumihost.py`` differs from the copy (that rebuilds
nothing). The pieces:

- ``cli``: ``github.com/pulumi/pulumi/pkg/v3/cmd/pulumi``, version stamped. ``go install`` cannot
  build it (pkg/v3's go.mod has replace directives); ``tests/pulumigo/cli/go.mod`` copies the one
  that matters (the clipboard fork).
- ``python``: ``pulumi-language-python``, the Python language host, is ours:
  ``tests/pulumihost.py`` (what it implements and what not is said there), copied into the bin
  directory beside a shell launcher of that name that runs it with ``HML_PULUMI_PYTHON``
  (``engine_env`` sets this interpreter). ``pulumi-language-python-exec``, the script it starts
  programs with, is copied from sdk/v3's module (``python/cmd/``); nothing of it is built.
- ``kubernetes``: ``pulumi-resource-kubernetes`` from ``github.com/pulumi/pulumi-kubernetes/provider/v4``.
  Its main package embeds ``schema-embed.json`` and ``terraform-mapping-embed.json``, which its
  ``go generate`` step (``generate.go``) makes from the module's ``schema.json`` and
  ``terraform-mapping.json``: the build copies the package out of the module cache into a build
  directory beside a copy of ``tests/pulumigo/kubernetes/go.mod``, does that step and builds.

The prometheus-operator's CRDs (``PrometheusRule``, ``AlertmanagerConfig``), which monitoring's
on-prem objects need in the bed, come ready-made from that project's Go module
(``prometheus_operator_crds``, ``install_crds``; ``python -m tests.pulumibed crds``).

A ``pulumi`` already on PATH is used as it is, with its installation's own language host
(``HML_PULUMI_BUILD=1`` builds anyway). The engine finds the language host and the provider on
PATH (ambient plugins), and ``engine_env`` turns off update checks and plugin downloads.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.tier import refuse_in_fast_tier

GO_DIR = Path(__file__).resolve().parent / "pulumigo"
REPO = Path(__file__).resolve().parents[1]
HOST = Path(__file__).resolve().parent / "pulumihost.py"
"""Our language host, copied into the bin directory under this name."""
LAUNCHER = """#!/bin/sh
# hybridml's Python language host (tests/pulumihost.py), written by tests/pulumibed.py
exec "${HML_PULUMI_PYTHON:-python3}" "$(dirname "$0")/pulumihost.py" "$@"
"""
PULUMI_VERSION = "v3.276.0"
KUBERNETES_VERSION = "v4.0.0-20260115033456-f47bc2d6f199"
"""The only provider/v4 version the module proxy serves here (a commit of 2026-01-15)."""
STAMP = "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=" + PULUMI_VERSION
PROVIDER_MODULE = "github.com/pulumi/pulumi-kubernetes/provider/v4"
PROVIDER_PKG = "cmd/pulumi-resource-kubernetes"
BINARIES = (
    "pulumi",
    "pulumi-language-python",
    "pulumihost.py",
    "pulumi-language-python-exec",
    "pulumi-resource-kubernetes",
)


def cache_root() -> Path:
    return Path(os.environ.get("HML_K8S_CACHE") or Path.home() / ".cache" / "hybridml")


def bin_dir() -> Path:
    """Keyed by the pinned versions and a digest of the files under tests/pulumigo. Not by our
    language host: it is copied again whenever it differs, no Go build hangs on it."""
    digest = hashlib.sha256()
    for path in sorted(GO_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(GO_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    # pulumi-3.276.0-kubernetes4.0.0-20260115: the provider's pseudo-version up to its date
    name = f"pulumi-{PULUMI_VERSION.lstrip('v')}-kubernetes{KUBERNETES_VERSION.lstrip('v')[:14]}"
    return cache_root() / f"{name}-{digest.hexdigest()[:10]}" / "bin"


def ambient_pulumi() -> str | None:
    """A ``pulumi`` on PATH that is not ours: used as it is."""
    if os.environ.get("HML_PULUMI_BUILD") == "1":
        return None
    found = shutil.which("pulumi")
    return found if found and Path(found).parent != bin_dir() else None


def needed() -> tuple[str, ...]:
    """What to build: everything, or only the provider beside a ``pulumi`` on PATH (whose
    installation brings its language hosts)."""
    return BINARIES if ambient_pulumi() is None else ("pulumi-resource-kubernetes",)


def _current(name: str) -> bool:
    if name == "pulumi-language-python":  # ours, copied: current when the copy is this file
        copy = bin_dir() / "pulumihost.py"
        return copy.is_file() and copy.read_bytes() == HOST.read_bytes()
    return (bin_dir() / name).is_file()


def built() -> bool:
    return all((bin_dir() / b).is_file() for b in needed()) and all(_current(b) for b in needed())


def _go(args: list[str], cwd: Path, **env: str) -> str:
    return subprocess.run(
        ["go", *args],
        cwd=cwd,
        check=True,
        capture_output=args[0] in ("list", "env", "mod"),
        text=True,
        env={**os.environ, "GOFLAGS": "-mod=readonly", **env},
    ).stdout


def build(log: Any = sys.stderr) -> Path:
    """Build whatever of the engine's binaries the cache lacks; the bin directory."""
    target = bin_dir()
    if built():
        return target
    if not shutil.which("go"):
        raise RuntimeError("the Pulumi engine for the tests needs Go (go1.26): apt-get install golang-go")
    target.mkdir(parents=True, exist_ok=True)
    work = target.parent
    with open(work / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        steps = [
            ("pulumi", lambda out: _build_cli(out)),
            ("pulumi-language-python", lambda out: _build_python(out)),
            ("pulumi-resource-kubernetes", lambda out: _build_kubernetes(out, work)),
        ]
        for name, step in steps:
            if name not in needed() or _current(name):
                continue
            tmp = work / f"tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            started = time.monotonic()
            print(f"pulumibed: building {name} (Go caches: ~/go/pkg/mod, ~/.cache/go-build)", file=log)
            step(tmp)
            for made in sorted(tmp.iterdir()):
                if made.is_file():
                    os.replace(made, target / made.name)
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"pulumibed: built {name} in {time.monotonic() - started:.0f} s", file=log, flush=True)
    return target


def _build_cli(out: Path) -> None:
    _go(
        ["build", "-ldflags", STAMP, "-o", f"{out}/", "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"],
        GO_DIR / "cli",
    )


def _build_python(out: Path) -> None:
    """Nothing to compile: our host, its launcher, and the SDK's program runner."""
    shutil.copyfile(HOST, out / "pulumihost.py")
    (out / "pulumi-language-python").write_text(LAUNCHER)
    (out / "pulumi-language-python").chmod(0o755)
    sdk = _go(["list", "-m", "-f", "{{.Dir}}", "github.com/pulumi/pulumi/sdk/v3"], GO_DIR / "cli").strip()
    shutil.copyfile(
        Path(sdk) / "python" / "cmd" / "pulumi-language-python-exec", out / "pulumi-language-python-exec"
    )
    (out / "pulumi-language-python-exec").chmod(0o755)


def _build_kubernetes(out: Path, work: Path) -> None:
    """Copy the provider's main package beside our go.mod, do its ``go generate`` step, build."""
    here = GO_DIR / "kubernetes"
    # `go list -m` names the module's directory only once it is in the module cache: on a new
    # machine nothing has fetched it yet
    _go(["mod", "download", PROVIDER_MODULE], here)
    module = Path(_go(["list", "-m", "-f", "{{.Dir}}", PROVIDER_MODULE], here).strip())
    if not (module / PROVIDER_PKG / "main.go").is_file():
        raise RuntimeError(f"{PROVIDER_MODULE}: no {PROVIDER_PKG}/main.go in {module or 'the module cache'}")
    src = work / "src-kubernetes"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    for name in ("go.mod", "go.sum"):
        shutil.copyfile(here / name, src / name)
    pkg = src / "provider"
    pkg.mkdir()
    shutil.copyfile(module / PROVIDER_PKG / "main.go", pkg / "main.go")
    # generate.go, in Python: the schema with the version set, and both files re-serialised
    version = KUBERNETES_VERSION.lstrip("v")
    schema = json.loads((module / PROVIDER_PKG / "schema.json").read_text())
    schema["version"] = version
    (pkg / "schema-embed.json").write_text(json.dumps(schema, separators=(",", ":")))
    mapping = json.loads((module / PROVIDER_PKG / "terraform-mapping.json").read_text())
    (pkg / "terraform-mapping-embed.json").write_text(json.dumps(mapping, separators=(",", ":")))
    stamp = f"-X {PROVIDER_MODULE}/pkg/version.Version={version}"
    _go(["build", "-ldflags", stamp, "-o", str(out / "pulumi-resource-kubernetes"), "./provider"], src)
    shutil.rmtree(src, ignore_errors=True)


PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
"""The release whose CRDs the bed gets (the newest the module proxy serves here)."""
PROMETHEUS_CRDS = ("prometheusrules", "alertmanagerconfigs")
"""What components/monitoring.py makes on-prem: PrometheusRule and AlertmanagerConfig."""


def prometheus_operator_crds() -> list[Path]:
    """The prometheus-operator's CRD manifests for ``PROMETHEUS_CRDS``, as its release ships them.

    Its Go module's zip carries them ready-made (``example/prometheus-operator-crd/``: the same
    files as the release's ``bundle.yaml``), so no controller-gen runs. ``go mod download`` fetches
    the module once into a module cache of ours under the cache root (``gomod/``, outside the
    clone; Go keeps it read-only); later calls find the files and run nothing.
    """
    gomod = cache_root() / "gomod"
    where = (
        gomod / f"{PROMETHEUS_OPERATOR}@{PROMETHEUS_OPERATOR_VERSION}" / "example" / "prometheus-operator-crd"
    )
    files = [where / f"monitoring.coreos.com_{name}.yaml" for name in PROMETHEUS_CRDS]
    if not all(f.is_file() for f in files):
        if not shutil.which("go"):
            raise RuntimeError(
                "the prometheus-operator CRDs come from its Go module: apt-get install golang-go"
            )
        gomod.mkdir(parents=True, exist_ok=True)
        _go(
            ["mod", "download", "-json", f"{PROMETHEUS_OPERATOR}@{PROMETHEUS_OPERATOR_VERSION}"],
            gomod,  # no go.mod here or above: a module query of its own
            GOMODCACHE=str(gomod),
        )
    return files


class _CrdLoader(yaml.SafeLoader):
    """YAML as the API server reads it: a bare ``=`` (an enum value in AlertmanagerConfig's schema,
    the matchers' ``matchType``) is the string, not YAML 1.1's ``!!value`` tag PyYAML refuses."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", yaml.SafeLoader.construct_yaml_str)


def install_crds(api: Any, files: list[Path], timeout: float = 60) -> list[str]:
    """Create each CRD in ``files`` through the API (one already there is left as it is) and wait
    until the API server serves it (``Established``); their names."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in files:
        body = yaml.load(path.read_text(), Loader=_CrdLoader)  # noqa: S506 - a safe loader
        try:
            ext.create_custom_resource_definition(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        names.append(body["metadata"]["name"])
    deadline = time.monotonic() + timeout
    for name in names:
        while not any(
            c.type == "Established" and c.status == "True"
            for c in (ext.read_custom_resource_definition(name).status.conditions or [])
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not established after {timeout} s")
            time.sleep(0.2)
    return names


def pack_wheels(requirements: Path, python: str = sys.executable) -> Path:
    """A directory of wheels for everything ``requirements`` pulls (a policy pack's own
    virtualenv), downloaded once per machine with ``python``'s pip into the cache root, outside the
    clone (``pack-wheels-<python tag>-<digest of the file>``; ``.complete`` marks it whole).

    Why not pip's HTTP cache: this machine's package index answers with responses pip does not
    keep, so every install would download again. Installs then read only this directory
    (``PIP_NO_INDEX=1 PIP_FIND_LINKS=<it>``), with nothing fetched: about 16 s for the pack's
    requirements, most of it unpacking pulumi-aws (about 270 MB installed)."""
    tag = subprocess.run(
        [python, "-c", "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:10]
    target = cache_root() / f"pack-wheels-{tag}-{digest}"
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").is_file():
            tmp = target.parent / f"tmp-{target.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(
                [python, "-m", "pip", "download", "-q", "-d", str(tmp), "-r", str(requirements)],
                check=True,
                timeout=900,
            )
            (tmp / ".complete").write_text(requirements.read_text())
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    return target


def engine_env(state: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment for ``pulumi``: our binaries first on PATH, a file state backend in
    ``state``, its own ``PULUMI_HOME``, no update check and no plugin download. Refused in the
    fast tier, whose tests must not wait for the engine's build (tests/tier.py)."""
    refuse_in_fast_tier("the Pulumi engine")
    bins = [str(build())]
    pulumi = ambient_pulumi()
    if pulumi is not None:
        bins.insert(0, str(Path(pulumi).parent))
    state.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PATH": os.pathsep.join([*bins, os.environ["PATH"]]),
        "PULUMI_HOME": str(home),
        "PULUMI_BACKEND_URL": f"file://{state}",
        "PULUMI_CONFIG_PASSPHRASE": "hybridml-tests",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
        "PULUMI_SKIP_CONFIRMATIONS": "true",
        "NO_COLOR": "1",
        "HML_PULUMI_PYTHON": sys.executable,
        # the program imports this checkout's components, even where the virtualenv's editable
        # install points at another clone (its finder comes after PYTHONPATH's entries)
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pulumibed")
    parser.add_argument(
        "command",
        choices=["build", "where", "crds"],
        help="build the engine; print its bin directory; install the prometheus-operator's CRDs "
        "(PrometheusRule, AlertmanagerConfig) into the cluster of $KUBECONFIG and print their names",
    )
    args = parser.parse_args(argv)
    if args.command == "crds":
        from kubernetes import config

        for name in install_crds(config.new_client_from_config(), prometheus_operator_crds()):
            print(name)
    elif args.command == "build":
        if ambient_pulumi():
            print(
                f"pulumibed: using {ambient_pulumi()} from PATH; the provider still builds", file=sys.stderr
            )
        try:
            print(build())
        except RuntimeError as exc:  # no Go: a missing prerequisite, said in one line
            print(f"pulumibed: {exc}", file=sys.stderr)
            return 2
        except subprocess.CalledProcessError as exc:  # go's own errors are above
            print(f"pulumibed: {' '.join(exc.cmd[:2])} failed (exit {exc.returncode})", file=sys.stderr)
            return 1
    else:
        print(bin_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
