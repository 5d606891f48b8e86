"""One verified connection per host, reused for placement, staging, launch and following.

A backend holds one pool for its life; a command that fails on a lost connection drops it,
and the next use reconnects (verifying the host key again). On that connection one remote
session serves the commands in turn (hmlkit/ssh/session.py: the login shell and PAM are paid
once), and the output follower takes it over last; a command that finds it busy, or a host
that cannot run it, gets a session of its own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from hmlkit.errors import BackendError
from hmlkit.ssh import session as sessions
from hmlkit.ssh import shell
from hmlkit.ssh.forward import open_forward
from hmlkit.ssh.hosts import SshHost, connect, prepare_root
from hmlkit.ssh.session import Session
from hmlkit.ssh.shell import Feed, run
from hmlkit.ssh.stream import OutputStream


class HostPool:
    def __init__(
        self,
        known_hosts: str | Path,
        connect_timeout: float,
        target: str,
        default_root: str,
        key_fix: str | None = None,
    ) -> None:
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self.target = target
        self.key_fix = key_fix
        """What a wrong host key's message advises (hmlkit.ssh.hosts.connect's ``fix``)."""
        self.default_root = default_root
        self._clients: dict[str, Any] = {}
        self._roots: dict[str, str] = {}
        self._forwarded: dict[str, Any] = {}
        """host label -> the connection its tracking forward is open on."""
        self._lock = threading.Lock()
        self._connecting: dict[str, threading.Lock] = {}
        self.commands = 0
        """SSH sessions opened (each runs the login shell and PAM's session hooks on the host):
        what launching and following cost the hosts."""
        self.requests = 0
        """Commands and streams asked for, whether in a session of their own or in a shared one."""
        self._idle: dict[str, Session] = {}
        """host label -> its session (hmlkit/ssh/session.py) while no command uses it."""
        self._no_helper: set[str] = set()
        """Hosts where the session helper cannot start: a session per command there."""
        self.use_sessions = sessions.enabled()

    def client(self, host: SshHost) -> Any:
        """The host's connection; threads asking for one host at once share one connect."""
        with self._lock:
            host_lock = self._connecting.setdefault(host.label, threading.Lock())
        with host_lock:
            with self._lock:
                client = self._clients.get(host.label)
            transport = client.get_transport() if client else None
            if client is None or transport is None or not transport.is_active():
                client = connect(host, self.known_hosts, self.connect_timeout, self.target, self.key_fix)
                with self._lock:
                    self._clients[host.label] = client
        return client

    def exec(
        self, host: SshHost, command: str, timeout: float = 30.0, text: bool = True, stdin: Feed | None = None
    ) -> tuple[int, Any, str]:
        """Run ``command``; (exit status, stdout, stderr). A lost connection is dropped and raised."""
        client = self.client(host)
        with self._lock:
            self.requests += 1
        try:
            session = self._take(host, client)
            if session is None:
                with self._lock:
                    self.commands += 1
                return run(client, command, timeout, text=text, stdin=stdin)
            done = False
            try:
                result = session.run(command, timeout, text=text, stdin=stdin)
                done = True
            finally:
                if done:
                    self._give(host, session)
                else:
                    session.close()
            return result
        except BackendError as exc:
            self._drop(host, client)
            raise BackendError(f"{host.label}: {exc}") from None

    def runner(self, host: SshHost) -> Any:
        """``exec`` for ``host``: what staging and file writes take (``shell.run``'s signature)."""
        return lambda command, timeout=30.0, text=True, stdin=None: self.exec(
            host, command, timeout, text, stdin
        )

    def _take(self, host: SshHost, client: Any, start: bool = True) -> Session | None:
        """The host's idle session on ``client``, else (``start``) a new one; None: a session per
        command (off, busy with ``start`` false, or the helper cannot run there)."""
        if not self.use_sessions:
            return None
        with self._lock:
            session = self._idle.pop(host.label, None)
            if host.label in self._no_helper:
                return None
        if session is not None and session.client is client:
            return session
        if session is not None:
            self._forget(session)
        if not start:
            return None
        with self._lock:
            self.commands += 1
        session = Session.open(client, host.python, host.label, self.connect_timeout)
        if session is None:
            with self._lock:
                self._no_helper.add(host.label)
        return session

    def _spare(self, host: SshHost, client: Any) -> None:
        """A session for what comes after the follower (the attempt's release), started while the
        job runs: the login it costs is paid off the path from the job's end to the run's."""
        try:
            session = self._take(host, client)
        except BackendError:
            return  # the next command opens one itself, and says what failed
        if session is not None:
            self._give(host, session)

    def _give(self, host: SshHost, session: Session) -> None:
        """Back to the host's slot; one idle session per host is kept, another is ended."""
        with self._lock:
            extra = session if host.label in self._idle else None
            if extra is None:
                self._idle[host.label] = session
        if extra is not None:
            self._forget(extra)

    def _forget(self, session: Session) -> None:
        session.close()

    def forward(self, host: SshHost, tracking_uri: str, port: int = 0) -> int:
        """Hold the host's forward of ``127.0.0.1:port`` to the tracking server (hmlkit/ssh/forward.py)
        on the live connection, opening it again after a reconnect; the host's port."""
        client = self.client(host)
        with self._lock:
            if port and self._forwarded.get(host.label) is client:
                return port
        port = open_forward(client, tracking_uri, port)
        with self._lock:
            self._forwarded[host.label] = client
        return port

    def stream(self, host: SshHost, command: str, timeout: float = 15.0) -> OutputStream:
        """Start ``command`` (under ``/bin/sh``, hmlkit/ssh/shell.py) and leave it running: in the
        host's idle session when there is one (it becomes ``command``), else on a channel of its own."""
        client = self.client(host)
        with self._lock:
            self.requests += 1
        try:
            session = self._take(host, client, start=False)
            if session is not None:
                try:
                    stream = session.become(command)
                except BaseException:
                    session.close()
                    raise
                threading.Thread(target=self._spare, args=(host, client), daemon=True).start()
                return stream
            with self._lock:
                self.commands += 1
            channel = client.get_transport().open_session(timeout=timeout)
            channel.exec_command(shell.command(command))
        except Exception as exc:  # paramiko raises socket, SSH and EOF errors alike on a lost host
            self._drop(host, client)
            raise BackendError(
                f"{host.label}: cannot open a stream: {str(exc) or type(exc).__name__}"
            ) from None
        return OutputStream(channel, host.label)

    def _drop(self, host: SshHost, client: Any) -> None:
        """Forget a connection that failed; the next use reconnects."""
        with self._lock:
            if self._clients.get(host.label) is client:
                self._clients.pop(host.label)
            session = self._idle.pop(host.label, None)
        if session is not None:
            self._forget(session)
        client.close()

    def root(self, host: SshHost) -> str:
        """The host's remote root, absolute, prepared on first use."""
        if host.label not in self._roots:
            self._roots[host.label] = prepare_root(
                self.runner(host), host, host.remote_root or self.default_root
            )
        return self._roots[host.label]

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            idle, self._idle = list(self._idle.values()), {}
        for session in idle:
            self._forget(session)
        for client in clients:
            client.close()
