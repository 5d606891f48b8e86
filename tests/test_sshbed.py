"""The SSH test bed itself: real sshd hosts that accept key auth under strict host-key checking,
serve SFTP, tag every process they start, and die, hang, come back and re-key on demand.

These tests use a bed of their own (not the session ``ssh_bed``) because they kill, freeze
and re-key hosts; each test leaves its host running again.
"""

from __future__ import annotations

import pwd
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests.sshbed import Host, Login, SshBed, start_bed

pytestmark = pytest.mark.server  # starts its own SSH bed


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshBed]:
    bed = start_bed(tmp_path_factory.mktemp("own-sshbed"), 2)
    try:
        yield bed
    finally:
        bed.stop()


def connect(host: Host, timeout: float = 10) -> paramiko.SSHClient:
    """Key auth with unknown keys rejected: only the host's own known_hosts line is trusted."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    entry = paramiko.hostkeys.HostKeyEntry.from_line(host.host_key_line())
    for name in entry.hostnames:
        client.get_host_keys().add(name, entry.key.get_name(), entry.key)
    client.connect(
        host.address,
        port=host.port,
        username=host.user,
        key_filename=str(host.identity_file),
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
        allow_agent=False,
        look_for_keys=False,
    )
    return client


def run(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, _ = client.exec_command(command, timeout=10)
    return stdout.read().decode().strip()


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_hosts_are_distinct_loopback_machines(bed: SshBed) -> None:
    h1, h2 = bed.hosts
    assert h1.address != h2.address and all(h.address.startswith("127.0.0.") for h in bed.hosts)
    assert h1.marker != h2.marker and h1.fingerprint() != h2.fingerprint()
    assert h1.host_key_line().startswith(f"[{h1.address}]:{h1.port} ssh-ed25519 AAAA")
    assert bed.known_hosts_text().splitlines() == [h1.host_key_line(), h2.host_key_line()]
    target = bed.target(Path("/kh"), gpu_hour_usd=1.5)
    assert target["kind"] == "ssh" and target["known_hosts"] == "/kh" and target["gpu_hour_usd"] == 1.5
    assert [h["port"] for h in target["hosts"]] == [h1.port, h2.port]


def test_key_auth_with_strict_host_keys_and_marker(bed: SshBed) -> None:
    for host in bed.hosts:
        with connect(host) as client:
            assert run(client, "echo $HML_TESTBED_HOST") == host.marker


def test_unknown_host_key_is_rejected(bed: SshBed) -> None:
    h1, h2 = bed.hosts
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    entry = paramiko.hostkeys.HostKeyEntry.from_line(h2.host_key_line())  # the wrong host's key
    client.get_host_keys().add(f"[{h1.address}]:{h1.port}", entry.key.get_name(), entry.key)
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(
            h1.address,
            port=h1.port,
            username=h1.user,
            key_filename=str(h1.identity_file),
            timeout=10,
            allow_agent=False,
            look_for_keys=False,
        )
    client.close()


def test_sftp_put_and_get(bed: SshBed, tmp_path: Path) -> None:
    host = bed.hosts[1]
    local = tmp_path / "up.bin"
    local.write_bytes(b"\x00hello sftp\xff" * 1000)
    with connect(host) as client, client.open_sftp() as sftp:
        sftp.put(str(local), str(host.remote_root / "up.bin"))
        sftp.get(str(host.remote_root / "up.bin"), str(tmp_path / "down.bin"))
    assert (host.remote_root / "up.bin").read_bytes() == local.read_bytes()
    assert (tmp_path / "down.bin").read_bytes() == local.read_bytes()


def test_detached_process_is_tracked_and_killed_with_the_host(bed: SshBed) -> None:
    h1, h2 = bed.hosts
    with connect(h1) as client:
        run(client, "nohup setsid sleep 300 >/dev/null 2>&1 & echo started")
    assert wait_for(lambda: len(h1.processes()) == 1), h1.processes()
    (pid,) = h1.processes()

    def command() -> list[bytes]:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2]

    assert wait_for(lambda: command() == [b"sleep", b"300"]), command()  # setsid execs sleep
    assert h2.processes() == []
    h1.kill()
    assert h1.processes() == [] and not h1.alive()
    assert not Path(f"/proc/{pid}/cmdline").exists() or Path(f"/proc/{pid}/cmdline").read_bytes() == b""
    with pytest.raises(OSError):
        connect(h1, timeout=3)
    h1.start()
    with connect(h1) as client:
        assert run(client, "echo $HML_TESTBED_HOST") == h1.marker


def test_kill_drops_open_connections(bed: SshBed) -> None:
    host = bed.hosts[0]
    client = connect(host)
    try:
        host.kill()
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            run(client, "echo still here")
    finally:
        client.close()
        host.start()


def test_freeze_hangs_connections_and_thaw_recovers(bed: SshBed) -> None:
    host = bed.hosts[1]
    with connect(host) as client:
        run(client, "nohup setsid sleep 300 >/dev/null 2>&1 &")
    assert wait_for(lambda: len(host.processes()) == 1)
    host.freeze()
    try:
        (pid,) = host.processes()
        assert Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "T"
        started = time.monotonic()
        with pytest.raises((paramiko.SSHException, OSError, EOFError)):
            connect(host, timeout=3)
        assert time.monotonic() - started < 15
    finally:
        host.thaw()
    with connect(host) as client:
        assert run(client, "echo back") == "back"
    host.kill()
    host.start()
    assert host.processes() == []


def test_rotate_host_key_changes_fingerprint_and_old_key_is_refused(bed: SshBed) -> None:
    host = bed.hosts[0]
    old_line, old_fp = host.host_key_line(), host.fingerprint()
    host.rotate_host_key()
    assert host.fingerprint() != old_fp and host.fingerprint().startswith("SHA256:")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    old = paramiko.hostkeys.HostKeyEntry.from_line(old_line)
    client.get_host_keys().add(old.hostnames[0], old.key.get_name(), old.key)
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(
            host.address,
            port=host.port,
            username=host.user,
            key_filename=str(host.identity_file),
            timeout=10,
            allow_agent=False,
            look_for_keys=False,
        )
    client.close()
    with connect(host) as fresh:
        assert run(fresh, "echo $HML_TESTBED_HOST") == host.marker


def test_a_login_bed_is_a_users_host_and_goes_with_its_user(tmp_path: Path) -> None:
    """``Login()``: an ordinary account through Debian's stock sshd (PAM on), the
    distribution's python3 on its PATH, its rc files run; stop() removes the account."""
    bed = start_bed(tmp_path, 1, login=Login())
    host = bed.hosts[0]
    try:
        (Path(pwd.getpwnam(host.user).pw_dir) / ".bashrc").write_text("export HML_BED_RC=ran\n")
        with connect(host) as client:
            assert run(client, "id -u") != "0"
            assert run(client, "command -v python3") == "/usr/bin/python3"
            assert run(client, "echo $HML_BED_RC") == "ran"  # bash ran ~/.bashrc: no SHLVL trick
        assert "UsePAM yes" in host.config.read_text()
        assert bed.shared_root.owner() == host.user
    finally:
        bed.stop()
    with pytest.raises(KeyError):
        pwd.getpwnam(host.user)
