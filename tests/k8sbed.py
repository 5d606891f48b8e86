"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, as plain processes on loopback.

Why real: the ``kubernetes`` target must meet what it meets on a cluster (the Job controller's
Indexed pods, the scheduler's "0/3 nodes are available" with taints and GPU capacity, foreground
deletion, the log API through the node), and a fake API would only echo our assumptions.

The binaries are built from the Go module proxy (``tests/k8sgo/``: one go.mod each for the
control plane, etcd and kwok, pinned) into ``~/.cache/hybridml/k8s-<versions>-<digest>/bin``
(``HML_K8S_CACHE`` moves the root), once per machine: a fresh clone, CI included, reuses them,
and Go's own module and build caches make a rebuild after a version bump quick.

kwok plays the nodes (their labels, taints, ``nvidia.com/gpu`` capacity, heartbeats) and serves
their kubelet API, so ``pods/log`` goes through the apiserver to the node as on a cluster. Its
nodes run no containers: the **pod executor** (``python -m tests.k8sbed executor``, started with
the bed) does what a kubelet's runtime would. It runs each pod bound to a node as a local
process: the container's command and args, its env (values, Secret and ConfigMap keys, the
downward API), its Secret/ConfigMap/emptyDir volumes as directories under the pod's own root
(the mount paths are made there, and ``workingDir`` too, so a command that uses paths relative
to its working directory runs unchanged). It reports the phase and exit code through the API,
writes the process's lines in the CRI log format and registers the file with kwok (a ``Logs``
object), and kills the process when the pod is deleted or its node goes. The "image" is this
machine: its ``python3`` and ``PATH``; a container without a command (an image's own entrypoint,
such as a daemon's) runs as an idle process until its pod is deleted.

Secrets are encrypted at rest in etcd (``secretbox``), as a careful cluster has them, so a test
may search the bed's files for a leaked secret value.

``python -m tests.k8sbed up --dir D`` / ``down --dir D`` for hand use; the ``k8s_bed`` pytest
fixture for the tests; docs/runbooks/k8s-testbed.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sshbed import MARKER_VAR, _free_port, _proc_table
from tests.tier import refuse_in_fast_tier

GO_DIR = Path(__file__).resolve().parent / "k8sgo"
VERSIONS = {"kubernetes": "v1.36.3", "etcd": "v3.6.8", "kwok": "v0.8.0"}
"""What tests/k8sgo's go.mod files pin; the cache directory's name says them."""
COMPONENTS = {
    # build dir: go packages (the binaries take their last path element's name)
    "control": [
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes/cmd/kubectl",  # for people at the bed, and the bench's baseline
    ],
    "etcd": ["."],
    "kwok": ["sigs.k8s.io/kwok/cmd/kwok"],
}
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "kwok")
KWOK_FILES = {
    # what the bed takes from kwok's module, copied beside the binaries at build time
    "logs-crd.yaml": "kustomize/crd/bases/kwok.x-k8s.io_logs.yaml",
    "node-initialize.yaml": "kustomize/stage/node/fast/node-initialize.yaml",
    "node-heartbeat.yaml": "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
}
STATE_FILE = "k8sbed.json"
GPU = "nvidia.com/gpu"
POOL_LABEL = "hml.dev/pool"
GPU_TAINT = {"key": GPU, "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class Pool:
    """Fake nodes alike: what a stack's node pool gives them (labels, a taint, GPUs)."""

    name: str
    nodes: int
    gpus: int = 0
    tainted: bool = False
    cpu: str = "8"
    memory: str = "32Gi"

    @property
    def labels(self) -> dict[str, str]:
        return {POOL_LABEL: self.name, **({"nvidia.com/gpu.present": "true"} if self.gpus else {})}


DEFAULT_POOLS = (Pool("gpu", 2, gpus=2, tainted=True), Pool("cpu", 1))


def cache_root() -> Path:
    return Path(os.environ.get("HML_K8S_CACHE") or Path.home() / ".cache" / "hybridml")


def bin_dir() -> Path:
    """Keyed by the pinned versions and a digest of the go.mod/go.sum files that build them."""
    digest = hashlib.sha256()
    for path in sorted(GO_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(GO_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    name = "k8s-" + "-".join(f"{k}{v.lstrip('v')}" for k, v in VERSIONS.items())
    return cache_root() / f"{name}-{digest.hexdigest()[:10]}" / "bin"


def built() -> bool:
    d = bin_dir()
    return all((d / b).is_file() for b in BINARIES) and all((d / f).is_file() for f in KWOK_FILES)


def build(log: Any = sys.stderr) -> Path:
    """Build whatever of the bed's binaries the cache lacks; the bin directory.

    One build at a time per machine (a lock beside the cache): pytest workers and CI wait for
    each other rather than compiling the same tree twice on two cores.
    """
    target = bin_dir()
    if built():
        return target
    if not shutil.which("go"):
        raise RuntimeError(
            "the Kubernetes test bed needs Go (go1.26): apt-get install golang-go, or Go's tarball"
        )
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for component, packages in COMPONENTS.items():
            names = [("etcd" if p == "." else p.rsplit("/", 1)[1]) for p in packages]
            if all((target / n).is_file() for n in names):
                continue
            tmp = target.parent / f"tmp-{component}"
            shutil.rmtree(tmp, ignore_errors=True)
            started = time.monotonic()
            print(
                f"k8sbed: building {', '.join(names)} (Go caches: ~/go/pkg/mod, ~/.cache/go-build)", file=log
            )
            subprocess.run(
                ["go", "build", "-o", str(tmp) + "/", *packages],
                cwd=GO_DIR / component,
                check=True,
                env={**os.environ, "GOFLAGS": "-mod=readonly"},
            )
            for n in names:
                os.replace(tmp / n, target / n)
            tmp.rmdir()
            print(f"k8sbed: built {', '.join(names)} in {time.monotonic() - started:.0f} s", file=log)
        kwok_dir = subprocess.run(
            ["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"],
            cwd=GO_DIR / "kwok",
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for name, rel in KWOK_FILES.items():
            shutil.copyfile(Path(kwok_dir) / rel, target / name)
    return target


# --- certificates -------------------------------------------------------------------------


def _pki(root: Path) -> dict[str, Path]:
    """A CA, the serving certificate of the apiserver and kwok's kubelet API (127.0.0.1), an
    admin client certificate (system:masters) and the service account signing key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("hml-k8sbed-ca"))
        .issuer_name(name("hml-k8sbed-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(cn: str, org: str | None, server: bool) -> tuple[bytes, bytes]:
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn, org))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=7))
        )
        usage = x509.oid.ExtendedKeyUsageOID
        if server:
            sans: list[x509.GeneralName] = [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
                *(
                    x509.DNSName(d)
                    for d in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
                ),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage.CLIENT_AUTH]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    files: dict[str, bytes] = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": key_pem(ca_key),
    }
    files["serving.crt"], files["serving.key"] = issue("127.0.0.1", None, server=True)
    files["admin.crt"], files["admin.key"] = issue("hml-k8sbed-admin", "system:masters", server=False)
    sa_key = ec.generate_private_key(ec.SECP256R1())
    files["sa.key"] = key_pem(sa_key)
    files["sa.pub"] = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    secretbox = base64.b64encode(os.urandom(32)).decode()
    files["encryption.yaml"] = yaml.safe_dump(
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [
                {
                    "resources": ["secrets"],
                    "providers": [
                        {"secretbox": {"keys": [{"name": "k1", "secret": secretbox}]}},
                        {"identity": {}},
                    ],
                }
            ],
        }
    ).encode()
    paths = {}
    for fname, data in files.items():
        path = root / fname
        path.write_bytes(data)
        path.chmod(0o600)
        paths[fname] = path
    return paths


def _kubeconfig(path: Path, server: str, pki: dict[str, Path], context: str = "k8sbed") -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": context, "cluster": {"server": server, "certificate-authority-data": b64(pki["ca.crt"])}}
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": b64(pki["admin.crt"]),
                    "client-key-data": b64(pki["admin.key"]),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": "admin"}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


# --- the bed ------------------------------------------------------------------------------


@dataclass
class K8sBed:
    root: Path
    marker: str
    server: str = ""
    pools: tuple[Pool, ...] = DEFAULT_POOLS
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def context(self) -> str:
        return "k8sbed"

    def client(self) -> Any:
        """An ApiClient for this bed's admin (the official client, as the target uses)."""
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig), context=self.context)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.client())

    def target(self, **extra: object) -> dict[str, Any]:
        """A ``kubernetes`` target for the GPU pool: its selector and toleration."""
        gpu = next(p for p in self.pools if p.gpus)
        return {
            "kind": "kubernetes",
            "kubeconfig": str(self.kubeconfig),
            "context": self.context,
            "namespace": "default",
            "image": "python:3.13-slim",
            "node_selector": {POOL_LABEL: gpu.name},
            "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
            "gpu_hour_usd": 2.0,
            **extra,
        }

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        env = {**os.environ, MARKER_VAR: f"{self.marker}-{name}"}
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.pids[name] = proc.pid

    def log_tails(self, lines: int = 20) -> str:
        out = []
        for log in sorted((self.root / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        """Every process of the bed, pods' processes included (they carry the bed's marker)."""
        for _ in range(50):
            table = _proc_table()
            live = {p for p in _marked_prefix(self.marker, table)}
            if not live:
                break
            for pid in live:
                try:
                    os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def save_state(self) -> None:
        state = {"marker": self.marker, "server": self.server, "pids": self.pids}
        (self.root / STATE_FILE).write_text(json.dumps(state))

    # what tests do to the cluster

    def pods(self, selector: str = "") -> list[Any]:
        return list(self.core().list_pod_for_all_namespaces(label_selector=selector).items)

    def delete_node(self, name: str) -> None:
        self.core().delete_node(name)

    def add_node(self, pool: Pool, index: int) -> None:
        """A node (back) in ``pool``; returns once it is Ready and schedulable."""
        core = self.core()
        _create_node(core, pool, index)
        _wait(lambda: _ready(core.read_node(f"{pool.name}-{index}")), f"node {pool.name}-{index}", self)


def _marked_prefix(marker: str, table: dict[int, tuple[int, str]]) -> set[int]:
    """Live pids whose environment holds this bed's marker (any of its processes, pods' too)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = set()
    for pid, (_, state) in table.items():
        if state == "Z":
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if any(e.startswith(needle) for e in env.split(b"\0")):
            found.add(pid)
    return found


def _ready(node: Any) -> bool:
    """Ready, and the node lifecycle controller has lifted its not-ready taint."""
    conditions = node.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions) and not any(
        t.key.startswith("node.kubernetes.io/") for t in node.spec.taints or []
    )


def _create_node(core: Any, pool: Pool, index: int) -> None:
    capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110"}
    if pool.gpus:
        capacity[GPU] = str(pool.gpus)
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"{pool.name}-{index}",
            "labels": {**pool.labels, "kubernetes.io/hostname": f"{pool.name}-{index}", "type": "kwok"},
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [GPU_TAINT] if pool.tainted else []},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
    core.create_node(node)


def _wait(ready: Any, what: str, bed: K8sBed, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet; the deadline decides
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s\n{bed.log_tails()}")


def start_k8s(root: Path, pools: tuple[Pool, ...] = DEFAULT_POOLS) -> K8sBed:
    """Start the whole bed in ``root`` and return when the nodes are Ready and pods can be made."""
    refuse_in_fast_tier("a Kubernetes test bed")
    bins = build()
    root = root.resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    bed = K8sBed(root=root, marker=f"k8sbed-{uuid.uuid4().hex[:8]}", pools=pools)
    started = time.monotonic()
    try:
        _start_processes(bed, bins)
        bed.save_state()
        core = bed.core()
        for pool in pools:
            for k in range(pool.nodes):
                _create_node(core, pool, k)

        def nodes_ready() -> bool:
            return sum(map(_ready, core.list_node().items)) == sum(p.nodes for p in pools)

        _wait(nodes_ready, "the kwok nodes", bed)
        _wait(
            lambda: core.read_namespaced_service_account("default", "default"),
            "the default service account",
            bed,
        )
    except BaseException:
        bed.stop()
        raise
    (root / "startup_s").write_text(f"{time.monotonic() - started:.1f}\n")
    return bed


def _start_processes(bed: K8sBed, bins: Path) -> None:
    root = bed.root
    pki = _pki(root / "pki")
    etcd_port, peer_port, api_port, kwok_port = (_free_port("127.0.0.1") for _ in range(4))
    bed.server = f"https://127.0.0.1:{api_port}"
    bed._start(
        "etcd",
        [
            str(bins / "etcd"),
            "--name=k8sbed",
            f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=k8sbed=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",  # a test bed's etcd: nothing to keep across a crash
            "--log-level=warn",
        ],
    )
    _wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=2), "etcd", bed)
    bed._start(
        "kube-apiserver",
        [
            str(bins / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki['serving.crt']}",
            f"--tls-private-key-file={pki['serving.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            f"--kubelet-client-certificate={pki['admin.crt']}",
            f"--kubelet-client-key={pki['admin.key']}",
            f"--service-account-key-file={pki['sa.pub']}",
            f"--service-account-signing-key-file={pki['sa.key']}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC",
            f"--encryption-provider-config={pki['encryption.yaml']}",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--endpoint-reconciler-type=none",  # its endpoint would be 127.0.0.1, which Endpoints refuse
        ],
    )
    ctx = ssl.create_default_context(cafile=str(pki["ca.crt"]))
    ctx.load_cert_chain(str(pki["admin.crt"]), str(pki["admin.key"]))
    _wait(
        lambda: urllib.request.urlopen(f"{bed.server}/readyz", context=ctx, timeout=5).status == 200,
        "kube-apiserver",
        bed,
        timeout=120,
    )
    _kubeconfig(bed.kubeconfig, bed.server, pki)
    common = [f"--kubeconfig={bed.kubeconfig}", "--leader-elect=false", "--secure-port=0", "--v=1"]
    bed._start(
        "kube-controller-manager",
        [
            str(bins / "kube-controller-manager"),
            *common,
            f"--service-account-private-key-file={pki['sa.key']}",
            f"--root-ca-file={pki['ca.crt']}",
            "--use-service-account-credentials=false",
            "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle,-route",
            "--concurrent-job-syncs=5",
        ],
    )
    bed._start("kube-scheduler", [str(bins / "kube-scheduler"), *common])
    client = bed.client()
    from kubernetes import client as k8s
    from kubernetes import utils

    utils.create_from_yaml(client, str(bins / "logs-crd.yaml"))
    ext = k8s.ApiextensionsV1Api(client)
    _wait(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition("logs.kwok.x-k8s.io").status.conditions or []
        ),
        "kwok's Logs CRD",
        bed,
    )
    stages = [yaml.safe_load((bins / f).read_text()) for f in ("node-initialize.yaml", "node-heartbeat.yaml")]
    kwok_config = root / "kwok.yaml"
    # node stages only: kwok keeps the nodes alive and leaves every pod to the executor
    kwok_config.write_text(yaml.safe_dump_all(stages))
    bed._start(
        "kwok",
        [
            str(bins / "kwok"),
            f"--kubeconfig={bed.kubeconfig}",
            f"--config={kwok_config}",
            "--manage-nodes-with-label-selector=type=kwok",
            "--node-ip=127.0.0.1",
            f"--node-port={kwok_port}",
            f"--server-address=127.0.0.1:{kwok_port}",
            f"--tls-cert-file={pki['serving.crt']}",
            f"--tls-private-key-file={pki['serving.key']}",
            "--enable-crds=Logs",
            "--node-lease-duration-seconds=40",
            "--v=WARN",  # not a line per lease renewal
        ],
    )
    bed._start(
        "executor",
        [sys.executable, "-m", "tests.k8sbed", "executor", "--dir", str(root), "--marker", bed.marker],
    )


@pytest.fixture(scope="session")
def k8s_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sBed]:
    """A control plane for the whole session: 2 tainted GPU nodes (2 GPUs each), 1 CPU node."""
    bed = start_k8s(tmp_path_factory.mktemp("k8sbed"))
    try:
        yield bed
    finally:
        bed.stop()


# --- the pod executor ---------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class _Pod:
    """One pod's process, its log file and what it reports."""

    def __init__(self, executor: Executor, pod: Any) -> None:
        self.ex = executor
        self.uid = pod.metadata.uid
        self.name = pod.metadata.name
        self.namespace = pod.metadata.namespace
        self.dir = executor.root / "pods" / self.uid
        self.log = self.dir / "container.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.last_ns = 0
        self.ip = executor.next_ip()
        """An address for the API's books (EndpointSlices refuse loopback); the process listens on
        this machine's addresses, as every pod here shares its network."""

    def start(self, pod: Any) -> None:
        fs = self.dir / "fs"
        fs.mkdir(parents=True, exist_ok=True)
        container = pod.spec.containers[0]
        volumes = {v.name: v for v in pod.spec.volumes or []}
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            if volume is None:
                continue
            where = fs / mount.mount_path.lstrip("/")
            self._fill(volume, where)
        work = fs / (container.working_dir or "/").lstrip("/")
        work.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ["PATH"], "HOME": str(work), "HOSTNAME": pod.spec.hostname or self.name}
        env[MARKER_VAR] = f"{self.ex.marker}-pod-{self.name}"
        for source in container.env_from or []:
            env |= self._source(source, self.namespace)
        for var in container.env or []:
            env[var.name] = self._value(var, pod, env)
        env = self._resolve(env)
        argv = [
            _VAR_REF.sub(lambda m: env.get(m[1], m[0]), a)
            for a in [*(container.command or []), *(container.args or [])]
        ]
        self.log.touch()
        if not container.command:
            # the image's own entrypoint (a daemon such as NVIDIA's device plugin): this machine has
            # no such image, so an idle process stands in for it until the pod is deleted
            self._write(
                "stderr", f"executor: {container.image} runs its entrypoint; idling for it\n".encode()
            )
            argv = [sys.executable, "-c", "import time; time.sleep(10**9)"]
        self.ex.create_logs(self)
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            self._write("stderr", f"executor: cannot start {argv[:1]}: {exc}\n".encode())
            self.ex.report(self, "Failed", 128, "StartError")
            return
        self.ex.report(self, "Running")
        readers = [
            threading.Thread(target=self._pump, args=(s, n), daemon=True)
            for s, n in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))
        ]
        for r in readers:
            r.start()
        threading.Thread(target=self._wait, args=(readers,), daemon=True).start()

    def _resolve(self, env: dict[str, str]) -> dict[str, str]:
        """The bed's cluster DNS: every pod here shares this machine's network, so a value naming a
        pod of a headless Service (``<hostname>.<service>[.<namespace>[.svc[.cluster.local]]]``,
        the torchrun rendezvous) is given as 127.0.0.1, which is where that pod listens."""
        services = self.ex.core.list_namespaced_service(self.namespace).items
        headless = {s.metadata.name for s in services if s.spec.cluster_ip == "None"}
        if not headless:
            return env
        names = "|".join(re.escape(h) for h in sorted(headless))
        ns = re.escape(self.namespace)
        pattern = re.compile(rf"[a-z0-9-]+\.({names})(\.{ns}(\.svc(\.cluster\.local)?)?)?")
        return {k: "127.0.0.1" if pattern.fullmatch(v) else v for k, v in env.items()}

    def _fill(self, volume: Any, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        items: dict[str, bytes] = {}
        mode = 0o644
        if volume.config_map is not None:
            cm = self.ex.core.read_namespaced_config_map(volume.config_map.name, self.namespace)
            items = {k: v.encode() for k, v in (cm.data or {}).items()}
            items |= {k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}
            mode = volume.config_map.default_mode or mode
        elif volume.secret is not None:
            secret = self.ex.core.read_namespaced_secret(volume.secret.secret_name, self.namespace)
            items = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            mode = volume.secret.default_mode or mode
        for key, data in items.items():
            path = where / key
            path.write_bytes(data)
            path.chmod(mode)

    def _source(self, source: Any, namespace: str) -> dict[str, str]:
        if source.secret_ref is not None:
            data = self.ex.core.read_namespaced_secret(source.secret_ref.name, namespace).data or {}
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        data = self.ex.core.read_namespaced_config_map(source.config_map_ref.name, namespace).data or {}
        return dict(data)

    def _value(self, var: Any, pod: Any, env: dict[str, str]) -> str:
        if var.value_from is None:
            return _VAR_REF.sub(lambda m: env.get(m[1], m[0]), var.value or "")
        source = var.value_from
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            data = self.ex.core.read_namespaced_secret(ref.name, self.namespace).data or {}
            return base64.b64decode(data[ref.key]).decode()
        if source.config_map_key_ref is not None:
            ref = source.config_map_key_ref
            return (self.ex.core.read_namespaced_config_map(ref.name, self.namespace).data or {})[ref.key]
        if source.field_ref is not None:
            path = source.field_ref.field_path
            match = re.fullmatch(r"metadata\.(annotations|labels)\['(.+)'\]", path)
            if match:
                return (getattr(pod.metadata, match[1]) or {}).get(match[2], "")
            return {
                "metadata.name": self.name,
                "metadata.namespace": self.namespace,
                "metadata.uid": self.uid,
                "spec.nodeName": pod.spec.node_name,
                "spec.serviceAccountName": pod.spec.service_account_name or "",
                "status.podIP": self.ip,
                "status.hostIP": "127.0.0.1",
            }.get(path, "")
        return ""

    def _write(self, stream: str, data: bytes) -> None:
        """One CRI log line: ``<RFC3339Nano> <stream> F|P <bytes>``, strictly increasing times."""
        with self.lock:
            ns = max(time.time_ns(), self.last_ns + 1)
            self.last_ns = ns
            stamp = dt.datetime.fromtimestamp(ns // 10**9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            tag = "F" if data.endswith(b"\n") else "P"
            with open(self.log, "ab") as f:
                f.write(f"{stamp}.{ns % 10**9:09d}Z {stream} {tag} ".encode() + data.rstrip(b"\n") + b"\n")

    def _pump(self, pipe: Any, stream: str) -> None:
        for line in iter(pipe.readline, b""):
            self._write(stream, line)

    def _wait(self, readers: list[threading.Thread]) -> None:
        assert self.proc is not None
        code = self.proc.wait()
        for r in readers:
            r.join(5)
        if self.ex.deleting.get(self.uid):
            return
        code = 128 - code if code < 0 else code  # killed by a signal: a shell's 128+N
        self.ex.report(
            self, "Succeeded" if code == 0 else "Failed", code, "Completed" if code == 0 else "Error"
        )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


class Executor:
    """The bed's kubelet runtime: pods bound to kwok's nodes run here as processes."""

    def __init__(self, root: Path, marker: str) -> None:
        from kubernetes import client, config

        self.root = root
        self.marker = marker
        api = config.new_client_from_config(str(root / "kubeconfig"), context="k8sbed")
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.pods: dict[str, _Pod] = {}
        self.deleting: dict[str, bool] = {}
        self._ips = 0

    def next_ip(self) -> str:
        self._ips += 1
        return f"10.244.{self._ips // 250 % 250}.{self._ips % 250 + 2}"

    def create_logs(self, pod: _Pod) -> None:
        body = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
            "spec": {"logs": [{"logsFile": str(pod.log), "follow": True}]},
        }
        self.custom.create_namespaced_custom_object("kwok.x-k8s.io", "v1alpha1", pod.namespace, "logs", body)

    def report(self, pod: _Pod, phase: str, code: int | None = None, reason: str = "") -> None:
        now = _now()
        running = phase == "Running"
        state: dict[str, Any] = (
            {"running": {"startedAt": now}}
            if running
            else {"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now}}
        )
        status = {
            "phase": phase,
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "hostIP": "127.0.0.1",
            "startTime": now,
            "conditions": [
                {
                    "type": t,
                    "status": "True" if running or t == "PodScheduled" else "False",
                    "lastTransitionTime": now,
                }
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": self.container_name(pod),
                    "image": "k8sbed/local",
                    "imageID": "",
                    "containerID": f"k8sbed://{pod.uid}",
                    "ready": running,
                    "started": running,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
        try:
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})
        except Exception as exc:  # noqa: BLE001 - a pod deleted meanwhile: nothing to report to
            print(f"executor: status of {pod.name}: {exc}", file=sys.stderr, flush=True)

    def container_name(self, pod: _Pod) -> str:
        return self.names.get(pod.uid, "main")

    names: dict[str, str] = {}

    def loop(self) -> None:
        while True:
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the API blinked; the next round retries
                print(f"executor: {exc}", file=sys.stderr, flush=True)
            time.sleep(0.2)

    def step(self) -> None:
        listed = self.core.list_pod_for_all_namespaces().items
        seen = set()
        for pod in listed:
            uid = pod.metadata.uid
            seen.add(uid)
            if not pod.spec.node_name:
                continue
            if pod.metadata.deletion_timestamp is not None:
                self._delete(pod)
                continue
            if uid not in self.pods and pod.status.phase == "Pending":
                runner = _Pod(self, pod)
                self.pods[uid] = runner
                self.names[uid] = pod.spec.containers[0].name
                runner.start(pod)
        for uid in list(self.pods):
            if uid not in seen:  # force-deleted (its node went): nothing may run on
                self.deleting[uid] = True
                self.pods.pop(uid).kill()

    def _delete(self, pod: Any) -> None:
        """What a kubelet does for a pod being deleted: stop it, then let the API forget it."""
        uid = pod.metadata.uid
        self.deleting[uid] = True
        runner = self.pods.pop(uid, None)
        if runner is not None:
            runner.kill()
            if pod.status.phase not in ("Succeeded", "Failed"):  # as a kubelet: terminal before gone
                self.report(runner, "Failed", 137, "Error")
        from kubernetes import client

        try:
            self.custom.delete_namespaced_custom_object(
                "kwok.x-k8s.io", "v1alpha1", pod.metadata.namespace, "logs", pod.metadata.name
            )
        except client.ApiException:
            pass
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                # in the body: the apiserver reads a DELETE's options from its body when it has one
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
        except client.ApiException:
            pass


# --- hand use -----------------------------------------------------------------------------


def _up(directory: Path) -> None:
    bed = start_k8s(directory)
    profile = {"targets": {"local": {"kind": "local"}, "cluster": bed.target()}}
    text = yaml.safe_dump(profile, sort_keys=False)
    (bed.root / "hybridml.yaml").write_text(text)
    startup = (bed.root / "startup_s").read_text().strip()
    print(
        f"# Kubernetes test bed at {bed.server} (up in {startup} s); "
        f"export KUBECONFIG={bed.kubeconfig}\n"
        f"# profile: {bed.root / 'hybridml.yaml'}; stop: python -m tests.k8sbed down --dir {bed.root}\n"
        + text,
        end="",
    )


def _down(directory: Path) -> None:
    state = directory.resolve() / STATE_FILE
    if not state.exists():
        raise SystemExit(f"no Kubernetes test bed in {directory}")
    data = json.loads(state.read_text())
    K8sBed(root=directory.resolve(), marker=data["marker"]).stop()
    print(f"stopped the Kubernetes test bed in {directory}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.k8sbed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the binaries into the cache (once per machine)")
    for name, text in (("up", "start the bed; print a profile"), ("down", "stop what up started")):
        sub.add_parser(name, help=text).add_argument("--dir", type=Path, required=True)
    ex = sub.add_parser("executor", help="(started by up) run the pods bound to kwok's nodes")
    ex.add_argument("--dir", type=Path, required=True)
    ex.add_argument("--marker", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build())
        elif args.command == "up":
            _up(args.dir)
        elif args.command == "down":
            _down(args.dir)
        else:
            Executor(args.dir, args.marker).loop()
    except RuntimeError as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
