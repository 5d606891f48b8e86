"""SSH connections whose host keys are verified, shared by the ssh target and the inventory.

paramiko is imported lazily. An unknown or changed host key is refused with the fingerprint
and the fix; keys are only ever recorded by the explicit ``hml targets trust``.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from hmlkit.errors import BackendError, HostKeyError, UsageError
from hmlkit.extras import require
from hmlkit.ssh.shell import Runner, on, tar_feed, text_files, untar

if TYPE_CHECKING:
    import paramiko


class SshHost(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    identity_file: str | None = None
    """Private key file; without it the SSH agent is asked."""
    gpus: int | None = Field(default=None, ge=0)
    """GPU count; detected with nvidia-smi when not given (0 without it)."""
    labels: dict[str, str] = {}
    remote_root: str | None = None
    """This host's own remote root, overriding the target's."""
    python: str = Field(default="python3", pattern=r"^(/[A-Za-z0-9_.+/-]+|[A-Za-z0-9_.+-]+)$")
    """The interpreter hml's host-side helpers run with (3.6 or newer): a command on the login's
    PATH or an absolute path, for hosts whose ``python3`` is missing or too old."""

    @property
    def label(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_name(host: SshHost) -> str:
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


def _refusing_policy(target: str, fix: str | None) -> Any:
    class Refuse(_paramiko().MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko is untyped
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise HostKeyError(
                f"{hostname}: host key not trusted ({key.get_name()} {fingerprint(key)}); "
                + (fix or f"check it with the host's admin, then run: hml targets trust {target or 'TARGET'}")
            )

    return Refuse()


def connect(
    host: SshHost, known_hosts: str | Path, timeout: float = 10.0, target: str = "", fix: str | None = None
) -> Any:
    """An authenticated ``paramiko.SSHClient``; raises HostKeyError or BackendError.

    ``fix``: what to do about a key that is not the known one, where recording it with
    ``hml targets trust`` is not the answer (the aws target pins each instance's own key).
    """
    paramiko = _paramiko()

    client = paramiko.SSHClient()
    path = Path(known_hosts).expanduser()
    if path.is_file():
        client.load_host_keys(str(path))
    client.set_missing_host_key_policy(_refusing_policy(target, fix))
    key_file = str(Path(host.identity_file).expanduser()) if host.identity_file else None
    try:
        sock = socket.create_connection((host.address, host.port), timeout=timeout)
        # SSH sends many small packets and waits for the answers: without this, Nagle's algorithm
        # meets the peer's delayed ACK and a command can stall ~40 ms for nothing
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(
            host.address,
            port=host.port,
            sock=sock,
            username=host.user,
            key_filename=key_file,
            allow_agent=key_file is None,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyError(
            f"{_known_name(host)}: host key CHANGED (now {fingerprint(exc.key)}, known "
            f"{fingerprint(exc.expected_key)}); "
            + (
                fix
                or "this may be an attack. If the host was reinstalled, delete its line from "
                f"{path} and run: hml targets trust {target or 'TARGET'}"
            )
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise BackendError(
            f"{host.label}: authentication failed ({exc}); check identity_file and user"
        ) from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        client.close()
        raise BackendError(f"{host.label}: unreachable ({str(exc) or type(exc).__name__})") from None
    return client


def scan_key(host: SshHost, timeout: float = 10.0) -> Any:
    """The host's key as offered now, without authenticating (for ``hml targets trust``)."""
    paramiko = _paramiko()

    try:
        sock = socket.create_connection((host.address, host.port), timeout=timeout)
        transport = paramiko.Transport(sock)
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        transport.close()
    except (OSError, paramiko.SSHException) as exc:
        raise BackendError(f"{host.label}: cannot read its host key ({exc})") from None
    return key


def trust(
    hosts: list[SshHost], known_hosts: str | Path, confirm: Callable[[list[tuple[str, str, str]]], bool]
) -> list[tuple[str, str, str]]:
    """Show each host's current key to ``confirm``; if accepted, record them in ``known_hosts``."""
    paramiko = _paramiko()

    path = Path(known_hosts).expanduser()
    scanned = [(_known_name(host), scan_key(host)) for host in hosts]
    found = [(name, key.get_name(), fingerprint(key)) for name, key in scanned]
    if not confirm(found):
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = paramiko.HostKeys(str(path)) if path.is_file() else paramiko.HostKeys()
    for name, key in scanned:
        keys.add(name, key.get_name(), key)
    keys.save(str(path))
    path.chmod(0o600)
    return found


def write_files(execute: Runner, directory: str, files: dict[str, str]) -> None:
    """Write ``files`` (names relative to ``directory``), each 0600 from its first byte:
    ``env.sh`` carries the job's secrets. Through ``/bin/sh`` and tar, not SFTP (hmlkit/ssh/shell.py)."""
    feed = tar_feed(text_files(files))
    rc, _, err = execute(f"umask 077 && {untar(_q(directory))}", stdin=feed)
    if rc != 0:
        raise BackendError(f"cannot write files in {directory}: {err.strip()[-300:]}")


def prepare_root(execute: Runner, host: SshHost, root: str) -> str:
    """Create the remote root's layout (code, blobs, runs) once; its absolute path.

    The one set-up of a host for hml: the runner before a job, the inventory at ``pulumi up``.
    One the login cannot write is the user's to fix (UsageError, exit 2), not a host failure.
    """
    q = _q(root)
    rc, out, err = execute(
        f"mkdir -p {q}/code {q}/blobs {q}/runs && cd {q} && touch .hml-w && rm -f .hml-w && pwd"
    )
    if rc != 0 or not out.strip():
        raise UsageError(
            f"{host.label}: remote_root {root} is not writable by {host.user} ({err.strip()[-200:]}); "
            f"set remote_root to a directory {host.user} can write (a relative one is under its home)"
        )
    return str(out).strip()


def probe_host(host: dict[str, Any], known_hosts: str, remote_root: str) -> dict[str, Any]:
    """Connect (verified), read the GPUs and prepare the remote root: what registration records."""
    from hmlkit.gpus import QUERY, parse

    spec = SshHost.model_validate(host)
    root = spec.remote_root or remote_root
    client = connect(spec, known_hosts)
    try:
        prepare_root(on(client), spec, root)
        _, gpu_out, _ = on(client)(f"command -v nvidia-smi >/dev/null && {QUERY} || true")
        names = parse(gpu_out)
    finally:
        client.close()
    return {
        "address": spec.address,
        "port": spec.port,
        "gpus": spec.gpus if spec.gpus is not None else len(names),
        "gpu_names": names,
        "remote_root": root,
    }


def _paramiko() -> Any:
    return require("paramiko", "SSH (ssh targets, hml targets trust, the GPU host inventory)")


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)
