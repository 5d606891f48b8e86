"""A real SSH test bed: Debian openssh-server ``sshd`` "hosts" on loopback addresses 127.0.0.x.

Why real sshd: the ``ssh`` runner target (and the GPU-host inventory) must be tested against
what it meets in production — host-key verification, key auth, SFTP, detached jobs, dead and
hung hosts — and a mock would only confirm our own assumptions. Each host is its own sshd
process on its own 127.0.0.x address and free port, with its own generated ed25519 host key;
one generated user key is authorized on every host. 127.0.0.0/8 routes to ``lo`` on Linux, so
no network setup is needed, and nothing listens beyond loopback.

Every session the sshd of host ``hN`` starts carries ``HML_TESTBED_HOST=<marker>`` (sshd's
``SetEnv``); processes inherit it through fork, setsid and nohup, so ``processes()`` finds what
a job left behind by scanning ``/proc/*/environ``, and ``kill()`` can make a host die whole.

Used three ways: ``start_bed()`` from code, the ``ssh_bed`` pytest fixture, and for people
``python -m tests.sshbed up --hosts 2 --dir /tmp/hml-bed`` / ``down --dir /tmp/hml-bed``
(see docs/runbooks/ssh-testbed.md).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.tier import refuse_in_fast_tier

SSHD = Path("/usr/sbin/sshd")
MARKER_VAR = "HML_TESTBED_HOST"
STATE_FILE = "bed.json"
STOCK_CONFIG = Path("/etc/ssh/sshd_config")
INSTALL_HINT = "apt-get update && apt-get install -y openssh-server openssh-client"


def _keygen(path: Path, comment: str) -> None:
    """A fresh passwordless ed25519 key pair at ``path`` / ``path.pub`` (old files replaced,
    since ssh-keygen would otherwise stop and ask before overwriting)."""
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _free_port(address: str) -> int:
    """A TCP port nobody listens on at ``address`` right now (the kernel's pick, never 22)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process; vanished pids are skipped."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may contain spaces; fields after it are fixed.
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _marked(marker: str, table: dict[int, tuple[int, str]]) -> set[int]:
    """Live (non-zombie) pids whose initial environment holds ``HML_TESTBED_HOST=marker``."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = set()
    for pid, (_, state) in table.items():
        if state == "Z":
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.add(pid)
    return found


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> set[int]:
    """Live descendants of ``root``: sshd's per-connection processes. They are found by
    parentage because sshd's setproctitle overwrites their /proc environ, so no marker shows."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, state) in table.items():
        if state != "Z":
            children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Host:
    """One SSH "machine": its own sshd, host key, address, port and disk (``remote_root``)."""

    name: str
    address: str
    port: int
    user: str
    identity_file: Path
    remote_root: Path
    marker: str
    dir: Path = field(repr=False, default=Path())
    """Where this host's sshd_config, host key, pid file and log live."""
    pid: int | None = field(repr=False, default=None)
    """The sshd listener's pid while it runs (also kept in the CLI state file)."""
    netns: str = ""
    """The network namespace the host lives in (``start_bed(own_network=True)``), else ''."""
    stock: bool = False
    """Debian's own sshd settings (PAM on, the login shell's start-up files run), as users'
    hosts are; else the fast bed's (PAM off, ``~/.bashrc`` skipped)."""
    own_user: bool = False
    """``user`` was made for this bed (``start_bed(login=...)``) and goes with it."""
    _proc: subprocess.Popen | None = field(repr=False, default=None, compare=False)

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def host_key_line(self) -> str:
        """The known_hosts line: ``[ADDR]:PORT ssh-ed25519 AAAA...`` (paramiko reads this form; port
        22 is written as the bare address, as OpenSSH does)."""
        keytype, blob = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2]
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {keytype} {blob}"

    def fingerprint(self) -> str:
        """``SHA256:...`` of the host key, exactly as ``ssh-keygen -lf`` prints it."""
        out = subprocess.run(
            ["ssh-keygen", "-lf", str(self.host_key) + ".pub"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return out.split()[1]

    def processes(self) -> list[int]:
        """Pids of live processes started through this host's sshd (by marker), sshd excluded."""
        return sorted(_marked(self.marker, _proc_table()))

    def _listener(self, table: dict[int, tuple[int, str]]) -> int | None:
        """The running sshd listener's pid, checked by its command line (which names our config),
        so a stale pid reused by another process is never signalled."""
        if self.pid is None or self.pid not in table or table[self.pid][1] == "Z":
            return None
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return None
        return self.pid if str(self.config).encode() in cmdline else None

    def _everything(self) -> set[int]:
        """The listener, its per-connection sshd processes, and every marked process."""
        table = _proc_table()
        pids = _marked(self.marker, table)
        listener = self._listener(table)
        if listener is not None:
            pids |= {listener} | _descendants(listener, table)
        return pids

    def _stop_everything(self, deadline: float) -> set[int]:
        """SIGSTOP the whole host until a scan finds nothing new: a stopped process cannot fork,
        and a stopped listener keeps its children attached, so the set is then complete."""
        stopped: set[int] = set()
        while time.monotonic() < deadline:
            fresh = self._everything() - stopped
            if not fresh:
                return stopped
            _signal_all(fresh, signal.SIGSTOP)
            stopped |= fresh
        raise RuntimeError(f"{self.name}: processes kept appearing while stopping the host")

    def kill(self) -> None:
        """The host dies: SIGKILL its sshd, its connections and every process carrying its marker;
        returns once none of them is alive (zombies awaiting their parent do not count)."""
        deadline = time.monotonic() + 15
        while pids := self._stop_everything(deadline):
            _signal_all(pids, signal.SIGKILL)
            self._reap()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes still alive after kill: {sorted(pids)}")
            time.sleep(0.02)
        self.pid = None

    def _reap(self) -> None:
        """Collect our own sshd child, so it does not linger as a zombie."""
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                return
            self._proc = None

    def freeze(self) -> None:
        """A hung host or cut network: SIGSTOP sshd, its connections and all its processes.
        New connections complete the TCP handshake (kernel backlog) and then hang, like a
        host that stopped answering; open connections hang too."""
        self._stop_everything(time.monotonic() + 15)

    def thaw(self) -> None:
        """Undo ``freeze``: SIGCONT everything of this host."""
        _signal_all(self._everything(), signal.SIGCONT)

    def alive(self) -> bool:
        """Whether this host's sshd listener runs."""
        return self._listener(_proc_table()) is not None

    def start(self) -> None:
        """(Re)start sshd with the same keys and port; a no-op while it runs."""
        if self.alive():
            return
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation dir
        with self.log.open("ab") as log:
            # A minimal environment: the listener must not pass any marker of ours on.
            netns = ["ip", "netns", "exec", self.netns] if self.netns else []
            self._proc = subprocess.Popen(
                [*netns, str(SSHD), "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                start_new_session=True,
            )
        self.pid = self._proc.pid
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"sshd of {self.name} exited with {self._proc.returncode}:\n"
                    f"{self.log.read_text(errors='replace')}"
                )
            try:
                with socket.create_connection((self.address, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(
            f"sshd of {self.name} does not accept on {self.address}:{self.port}:\n"
            f"{self.log.read_text(errors='replace')}"
        )

    def rotate_host_key(self) -> None:
        """Replace the host key and restart sshd (open connections stay), for "changed host
        key" tests."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            self._reap()
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pid = None
        _keygen(self.host_key, f"{self.name}-host")
        self.start()

    def write_config(self, authorized_keys: Path) -> None:
        """This host's sshd_config. Its own lines come first (sshd takes a keyword's first
        value). A stock host then gets the distribution's own /etc/ssh/sshd_config unchanged
        (PAM, default MaxSessions, keys in ``~/.ssh/authorized_keys``); the fast bed instead
        turns PAM and the login shell's rc files off and raises the session limits."""
        own = [
            f"ListenAddress {self.address}:{self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "PasswordAuthentication no",
            "LogLevel ERROR",
        ]
        if self.stock:
            own.append(f"SetEnv {MARKER_VAR}={self.marker}")
            rest = STOCK_CONFIG.read_text().splitlines()
        else:
            rest = [
                f"AuthorizedKeysFile {authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "Subsystem sftp internal-sftp",
                # SHLVL=1: bash then counts itself nested and skips ~/.bashrc, as a GPU host's
                # bare login would; this machine's root .bashrc runs `pyenv rehash`, whose lock
                # file a killed host leaves behind, stalling every later login for a minute
                f"SetEnv {MARKER_VAR}={self.marker} SHLVL=1",
                # Runners open many channels and connections at once; the defaults (10) are low.
                "MaxSessions 100",
                "MaxStartups 100",
            ]
        self.config.write_text("\n".join([*own, *rest, ""]))

    def state(self) -> dict:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "identity_file": str(self.identity_file),
            "remote_root": str(self.remote_root),
            "marker": self.marker,
            "dir": str(self.dir),
            "pid": self.pid,
            "netns": self.netns,
            "stock": self.stock,
            "own_user": self.own_user,
        }

    @classmethod
    def from_state(cls, data: dict) -> Host:
        return cls(
            name=data["name"],
            address=data["address"],
            port=data["port"],
            user=data["user"],
            identity_file=Path(data["identity_file"]),
            remote_root=Path(data["remote_root"]),
            marker=data["marker"],
            dir=Path(data["dir"]),
            pid=data["pid"],
            netns=data.get("netns", ""),
            stock=data.get("stock", False),
            own_user=data.get("own_user", False),
        )


@dataclass
class SshBed:
    """A set of hosts sharing one user key and one ``shared-root`` directory."""

    root: Path
    hosts: list[Host]

    @property
    def shared_root(self) -> Path:
        """The directory every host sees (a cluster's shared file system), writable by the
        hosts' login user: in that user's home when the bed made one."""
        host = self.hosts[0]
        base = Path(pwd.getpwnam(host.user).pw_dir) if host.own_user else self.root
        return base / "shared-root"

    def known_hosts_text(self) -> str:
        return "".join(h.host_key_line() + "\n" for h in self.hosts)

    def target(self, known_hosts: Path, **extra) -> dict:
        """An hml profile target of kind ``ssh`` for these hosts; the caller chooses the
        known_hosts file so each test decides what it trusts."""
        return {
            "kind": "ssh",
            "hosts": [
                {
                    "address": h.address,
                    "port": h.port,
                    "user": h.user,
                    "identity_file": str(h.identity_file),
                    "remote_root": str(h.remote_root),
                }
                for h in self.hosts
            ],
            "known_hosts": str(known_hosts),
            "remote_root": str(self.shared_root),
            **extra,
        }

    def stop(self) -> None:
        """Kill every sshd and marked process; files stay."""
        errors = []
        for host in self.hosts:
            try:
                host.kill()
            except RuntimeError as e:
                errors.append(str(e))
            if host.netns:  # its veth pair goes with it
                subprocess.run(["ip", "netns", "delete", host.netns], capture_output=True, timeout=30)
        for user in {h.user for h in self.hosts if h.own_user}:
            subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True, timeout=30)
            subprocess.run(["userdel", "--remove", "--force", user], capture_output=True, timeout=30)
        if errors:
            raise RuntimeError("; ".join(errors))

    def save_state(self) -> None:
        (self.root / STATE_FILE).write_text(json.dumps([h.state() for h in self.hosts], indent=1))


def _own_network(name: str, subnet: int) -> str:
    """A network namespace ``name`` joined to this one by a veth pair on 10.213.<subnet>.0/30:
    the host gets .2, this side .1, and nothing else. Its loopback is its own, so services this
    machine offers on 127.0.0.1 (an MLflow server, say) are out of its reach; needs root."""
    outside, inside = f"hv{subnet}o", f"hv{subnet}i"
    for cmd in (
        f"ip netns add {name}",
        f"ip link add {outside} type veth peer name {inside}",
        f"ip link set {inside} netns {name}",
        f"ip addr add 10.213.{subnet}.1/30 dev {outside}",
        f"ip link set {outside} up",
        f"ip netns exec {name} ip addr add 10.213.{subnet}.2/30 dev {inside}",
        f"ip netns exec {name} ip link set {inside} up",
        f"ip netns exec {name} ip link set lo up",
    ):
        subprocess.run(cmd.split(), check=True, capture_output=True, timeout=30)
    return f"10.213.{subnet}.2"


@dataclass(frozen=True)
class Login:
    """Hosts as users' hosts are (``start_bed(login=Login())``): an ordinary account made for
    the bed with this login shell, the distribution's ``python3`` on its PATH, its key in
    ``~/.ssh/authorized_keys``, and (``stock``) Debian's own sshd settings with PAM on.
    The bed's default instead logs in as this machine's user with PAM off, for speed."""

    shell: str = "/bin/bash"
    stock: bool = True
    bashrc: str = ""
    """Put first in the user's ``~/.bashrc`` (before Debian's early return for non-interactive
    shells), so bash runs it for every SSH command: a start-up that costs time (``SLOW_BASHRC``,
    standing in for conda's init) or prints to stdout and stderr."""


SLOW_BASHRC = "sleep 0.15\n"
"""A login shell start-up of ~150 ms, as ``conda init`` or ``module`` set-up costs on GPU hosts."""


def _make_login_user(name: str, login: Login, public_key: Path) -> Path:
    """An OS account ``name`` whose login is key-only; returns its home. Its password field is
    ``*`` (no password, not locked: sshd refuses locked accounts when PAM is off)."""
    if not Path(login.shell).exists():
        raise RuntimeError(f"login shell {login.shell} is missing; install it with apt-get")
    subprocess.run(
        ["useradd", "--create-home", "--shell", login.shell, "--user-group", "--password", "*", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    entry = pwd.getpwnam(name)
    home = Path(entry.pw_dir)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(public_key.read_text())
    (home / "shared-root").mkdir()
    bashrc = home / ".bashrc"
    if login.bashrc:
        bashrc.write_text(login.bashrc + "\n" + (bashrc.read_text() if bashrc.exists() else ""))
    for path in (
        ssh_dir,
        ssh_dir / "authorized_keys",
        home / "shared-root",
        *([bashrc] if login.bashrc else []),
    ):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    (ssh_dir / "authorized_keys").chmod(0o600)
    return home


def start_bed(root: Path, n: int = 2, own_network: bool = False, login: Login | None = None) -> SshBed:
    """Generate keys and configs under ``root`` and start ``n`` sshd hosts on 127.0.0.2, .3, ...

    ``own_network``: each host lives in its own network namespace instead (``_own_network``),
    reachable from here over SSH only, the way a GPU box on a closed network is.
    ``login``: the hosts' login user is a new ordinary account (``Login``), removed by
    ``stop()``; each host's ``remote_root`` is then in that account's home."""
    refuse_in_fast_tier("an SSH bed")
    if not SSHD.exists():
        raise RuntimeError(f"{SSHD} is missing; install it: {INSTALL_HINT}")
    if not 1 <= n <= 200:
        raise ValueError(f"hosts: 1..200, not {n}")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "shared-root").mkdir(exist_ok=True)
    identity = root / "id_ed25519"
    _keygen(identity, "hml-testbed-user")
    authorized = root / "authorized_keys"
    shutil.copyfile(identity.with_name(identity.name + ".pub"), authorized)
    bed_id = uuid.uuid4().hex[:8]
    bed = SshBed(root=root, hosts=[])
    user, home = getpass.getuser(), None
    try:
        if login is not None:
            user = f"hb{bed_id}"
            home = _make_login_user(user, login, identity.with_name(identity.name + ".pub"))
        for i in range(1, n + 1):
            netns = f"hml-{bed_id}-h{i}" if own_network else ""
            subnet = int(bed_id[:4], 16) % 200 + i
            address = _own_network(netns, subnet) if own_network else f"127.0.0.{i + 1}"
            host_dir = root / f"h{i}"
            host = Host(
                name=f"h{i}",
                address=address,
                port=22 if own_network else _free_port(address),  # a namespace has its own ports
                user=user,
                identity_file=identity,
                remote_root=home / f"h{i}-root" if home else host_dir / "root",
                marker=f"hml-bed-{bed_id}-h{i}",
                dir=host_dir,
                netns=netns,
                stock=bool(login and login.stock),
                own_user=home is not None,
            )
            host_dir.mkdir(parents=True, exist_ok=True)
            if home is None:
                host.remote_root.mkdir(exist_ok=True)
            _keygen(host.host_key, f"h{i}-host")
            host.write_config(authorized)
            bed.hosts.append(host)
            host.start()
    except BaseException:
        bed.stop()
        raise
    return bed


@pytest.fixture(scope="session")
def ssh_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshBed]:
    """Two real sshd hosts for the whole test session; stopped at the end. Tests that kill,
    freeze or re-key a host should start their own bed instead, so others are not disturbed."""
    bed = start_bed(tmp_path_factory.mktemp("sshbed"), 2)
    try:
        yield bed
    finally:
        bed.stop()


@pytest.fixture(scope="session")
def ssh_user_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshBed]:
    """Two hosts as users' hosts are (``Login()``): stock Debian sshd with PAM on, an ordinary
    login user with bash, the distribution's ``python3``; stopped, user removed, at the end."""
    bed = start_bed(tmp_path_factory.mktemp("sshuserbed"), 2, login=Login())
    try:
        yield bed
    finally:
        bed.stop()


SLOW_PRINTING_BASHRC = SLOW_BASHRC + 'echo "Welcome to the cluster"; echo "conda: base activated" >&2\n'
"""A login as many GPU hosts have: ~150 ms of start-up that prints to stdout and stderr."""


@pytest.fixture(scope="session")
def ssh_slow_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshBed]:
    """One host as users' hosts are, at their slowest: stock Debian sshd with PAM on and a login
    whose ``~/.bashrc`` takes ~150 ms and prints (``SLOW_PRINTING_BASHRC``); the dispatch tests
    run against it beside the fast bed."""
    bed = start_bed(tmp_path_factory.mktemp("sshslowbed"), 1, login=Login(bashrc=SLOW_PRINTING_BASHRC))
    try:
        yield bed
    finally:
        bed.stop()


def _load(directory: Path) -> SshBed:
    state = directory.resolve() / STATE_FILE
    if not state.exists():
        raise SystemExit(f"no test bed in {directory} (no {STATE_FILE})")
    return SshBed(root=directory.resolve(), hosts=[Host.from_state(d) for d in json.loads(state.read_text())])


def _up(directory: Path, n: int, login: Login | None) -> None:
    if (directory / STATE_FILE).exists() and any(h.alive() for h in _load(directory).hosts):
        raise SystemExit(
            f"a test bed already runs in {directory}; run: python -m tests.sshbed down --dir {directory}"
        )
    bed = start_bed(directory, n, login=login)
    bed.save_state()
    known_hosts = bed.root / "known_hosts"
    known_hosts.write_text(bed.known_hosts_text())
    profile = {"targets": {"local": {"kind": "local"}, "onprem": bed.target(known_hosts)}}
    text = yaml.safe_dump(profile, sort_keys=False)
    (bed.root / "hybridml.yaml").write_text(text)
    lines = [
        f"# hybridml test bed: {n} sshd host(s) under {bed.root}",
        f"# known_hosts written to {known_hosts} (host keys trusted because you started this bed):",
    ]
    lines += [f"#   {h.name} [{h.address}]:{h.port} {h.fingerprint()}" for h in bed.hosts]
    lines += ["# log in:"]
    lines += [
        f"#   ssh -i {h.identity_file} -o UserKnownHostsFile={known_hosts} -p {h.port} {h.user}@{h.address}"
        for h in bed.hosts
    ]
    lines += [
        f"# this profile is also in {bed.root / 'hybridml.yaml'}; stop with: "
        f"python -m tests.sshbed down --dir {bed.root}"
    ]
    print("\n".join(lines) + "\n" + text, end="")


def _down(directory: Path) -> None:
    bed = _load(directory)
    bed.stop()
    bed.save_state()
    print(f"stopped {len(bed.hosts)} host(s) in {bed.root}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.sshbed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start sshd hosts and print a hybridml.yaml profile for them")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument(
        "--login-shell",
        metavar="SHELL",
        help="log in as a new ordinary user with this shell, through stock sshd (PAM on)",
    )
    up.add_argument(
        "--slow-login",
        action="store_true",
        help="with --login-shell: the user's ~/.bashrc takes ~150 ms (SLOW_BASHRC), as conda's init does",
    )
    up.add_argument("--dir", type=Path, required=True)
    down = sub.add_parser("down", help="stop the hosts started in --dir")
    down.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            bashrc = SLOW_BASHRC if args.slow_login else ""
            login = Login(shell=args.login_shell, bashrc=bashrc) if args.login_shell else None
            _up(args.dir, args.hosts, login)
        else:
            _down(args.dir)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
