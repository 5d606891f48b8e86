"""The tracking server, reached from a host through the runner's own SSH connection.

For hosts that cannot reach the tracking server (a GPU box on a closed network), the runner asks
the host's sshd for a remote port forward: sshd listens on the host's loopback, and each
connection made there comes back over the runner's existing connection, which the runner joins
to the tracking server. The job's relay (hmlkit/node/relay.py) uses that port as its upstream, so
while the runner follows the run, writes go home live; while it is away (laptop closed,
supervisor restarting) the relay journals them, and the forward opened again on the runner's
next contact lets the relay replay them.

The forward carries bytes as they are: an ``http://`` tracking server only. The host's port is
chosen once by its sshd and reused on every later forward (the relay was started with it).
"""

from __future__ import annotations

import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from hmlkit.errors import BackendError, UsageError

_BUFFER = 1 << 16


def server_address(tracking_uri: str) -> tuple[str, int]:
    """Where the runner connects for the host: the tracking URI's host and port."""
    parts = urlsplit(tracking_uri)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(
            f"tracking_via: runner needs an http:// tracking URI, not {tracking_uri!r}; "
            "use tracking_via: direct for this server"
        )
    return parts.hostname, parts.port or 80


def open_forward(client: Any, tracking_uri: str, port: int = 0) -> int:
    """Ask the host behind ``client`` to forward its ``127.0.0.1:port`` (0: its pick) to the
    tracking server through this connection; the port it listens on."""
    target = server_address(tracking_uri)
    transport = client.get_transport()

    def accept(channel: Any, origin: Any, server: Any) -> None:
        threading.Thread(target=_join, args=(channel, target), daemon=True, name="hml-forward").start()

    # each forwarded request and answer is a few small SSH packets: without this, Nagle holds
    # one back for the peer's delayed ACK (about 40 ms a call)
    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return int(transport.request_port_forward("127.0.0.1", port, handler=accept))
    except Exception as exc:  # paramiko's SSHException: the host refused (AllowTcpForwarding no?)
        raise BackendError(
            f"the host refused to forward port {port or 'any'} to the runner ({exc}); "
            "its sshd needs AllowTcpForwarding remote (or yes)"
        ) from None


def _join(channel: Any, target: tuple[str, int]) -> None:
    """Pipe one forwarded connection to the tracking server until either side closes."""
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        channel.close()  # the relay sees a dropped connection and journals
        return
    upstream.settimeout(None)
    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small HTTP writes: no Nagle wait

    def pump(read: Any, write: Any, done: Any) -> None:
        try:
            while data := read(_BUFFER):
                write(data)
        except OSError:
            pass
        finally:
            done()

    back = threading.Thread(
        target=pump, args=(upstream.recv, channel.sendall, channel.shutdown_write), daemon=True
    )
    back.start()
    pump(channel.recv, upstream.sendall, lambda: _shutdown(upstream))
    back.join()
    channel.close()
    upstream.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
