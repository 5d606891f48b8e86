"""A journaling relay for the MLflow REST API that runs beside each job, so no write is lost to an outage.

The job's ``MLFLOW_TRACKING_URI`` points here. Reads go straight through. A write (see ``_WRITES``)
goes through while the server answers; when it does not (refused, timeout, 5xx), the relay appends
the write to a journal on disk, fsyncs it, and answers the client with the success MLflow expects, so
a training loop never blocks on or dies of the tracking server. A background thread replays the
journal in order once the server is back; while a backlog exists, new writes queue behind it, so the
server sees the writes in the order the job made them. Metric writes, a training loop's every step,
are always journaled first and answered at once (fsync'd within ``SYNC_S``, delivered in batches by
replay): the job never waits for the server to log a metric. Any other request waits for the
metrics before it while the server answers, so the job reads back what it logged.

It serves its own job only (``Access``): every request must carry the job's token, which the
runner makes per attempt and the job's MLflow client sends from ``MLFLOW_TRACKING_TOKEN``; only
the MLflow calls a job makes are forwarded, to the job's own runs and models; the server's real
credentials arrive on stdin and are sent only to a loopback listener of this relay's own user
(``foreign_listener``); and the job's secret values are replaced in what it logs.

This file is copied to GPU hosts and run there with only ``python3``: standard library only, and
nothing from this repository.

Journal (``--journal DIR``):

* ``journal.jsonl``: one JSON line per write, fsync'd before the client hears success:
  ``{"seq", "method", "target", "headers", "body" | "blob", "doubt"}``. ``blob`` names a file in
  ``blobs/`` (artifact bodies, which are spooled to disk as they arrive and never held in memory).
  A torn last line can only come from a crash before its fsync, so its client never heard success;
  it is cut off on start.
* ``cursor``: the highest ``seq`` the server acknowledged, replaced atomically after each ack. A
  record is done only after its ack, so a crash can lose an ack but never a write.
* ``rejected.jsonl``: writes the server refused with a 4xx on replay (say, a param re-logged with
  another value); the client was already told success, so they are kept for a person to read rather
  than retried forever.

Exactly once. A crash or a timeout can leave one unit of writes *in doubt*: sent, perhaps applied,
not acknowledged. Everything not in doubt was never applied (connection refused, or queued behind
the backlog) or is done. Replay makes an in-doubt unit harmless to send again:

* params, tags, run updates, dataset inputs and artifact uploads are idempotent in MLflow (an
  identical param is accepted; the others overwrite with the same value or dedupe on the server);
* metrics are not idempotent in every store (the file store appends), so before re-sending an
  in-doubt unit the relay reads ``metrics/get-history`` for its keys and drops every metric whose
  (key, step, timestamp, value) is already there. Only in-doubt units pay for that read, so normal
  replay costs one request per unit; deduplicating every record against a cached history instead
  would cost memory per metric and a full history read per key on every start.

Runs are never created from the journal: ``runs/create`` and every other call are forwarded only, so
replay cannot make a ghost run. Consecutive metric writes for one run are replayed as one
``log-batch`` (at most ``_BATCH`` metrics), which drains a long outage's backlog in seconds.
"""

import argparse
import base64
import fcntl
import hmac
import http.client
import io
import ipaddress
import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

log = logging.getLogger("hml-relay")

STATUS_PATH = "/_relay/status"
_API_ROOTS = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")
_WRITES = (
    "runs/log-batch",
    "runs/log-metric",
    "runs/log-parameter",
    "runs/set-tag",
    "runs/update",
    "runs/log-inputs",
)
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts/"
_BATCH = 1000  # MLflow's own limit on metrics in one log-batch
# Hop-by-hop headers, and credentials: the relay adds its own, and a journal on disk must hold none.
_DROP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "cookie",
    "proxy-authorization",
}
SYNC_S = 0.05
GATHER_S = 0.2
"""How long replay waits for more of a logging job's metrics before it sends them: one request
of a fifth of a second's steps, not one per step (the server commits each request)."""
"""How long a metric write may sit in the page cache before it is fsync'd (``Journal.sync_behind``)."""
_IDLE_S = 2.0  # shorter than the keep-alive of the servers MLflow ships with (uvicorn: 5 s)


class Unreached(Exception):
    """The request never reached the server: it cannot have been applied."""


class Unanswered(Exception):
    """The request may have reached the server, but no answer came: it may have been applied."""


class Write:
    """One write as the client sent it (a plain class: ``dataclasses`` needs Python 3.7)."""

    def __init__(
        self,
        method: str,
        target: str,
        headers: "dict[str, str]",
        body: bytes = b"",
        blob: "Path | None" = None,
        seq: int = 0,
        doubt: bool = False,
        values: int = 1,
    ) -> None:
        self.method = method
        self.target = target  # path and query, as the client sent them
        self.headers = headers
        self.body = body
        self.blob = blob  # the body on disk instead, for artifact uploads
        self.seq = seq
        self.doubt = doubt
        self.values = values  # the metrics, params and tags it carries (at least 1): what the backlog counts

    @property
    def endpoint(self) -> str:
        path = self.target.partition("?")[0]
        return next((path[len(root) :] for root in _API_ROOTS if path.startswith(root)), "")

    def json(self) -> "dict[str, Any]":
        loaded: dict[str, Any] = json.loads(self.body or b"{}")
        return loaded

    def count_values(self) -> int:
        """How many values a person would say it logs: a client that batches (MLflow's async
        logging sends a second's steps in one ``log-batch``) makes few writes of many values."""
        if self.endpoint != "runs/log-batch":
            return 1
        try:
            body = self.json()
            found = sum(len(body.get(k) or []) for k in ("metrics", "params", "tags"))
        except (ValueError, TypeError, AttributeError):
            return 1
        return max(1, found)


def is_write(method: str, path: str) -> bool:
    if method == "PUT":
        return path.startswith(_ARTIFACTS)
    return method == "POST" and any(path == root + name for root in _API_ROOTS for name in _WRITES)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The durable queue of writes the server has not acknowledged yet, oldest first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.spool = root / "spool"
        self._path = root / "journal.jsonl"
        self._cursor = root / "cursor"
        self._lock = threading.Lock()
        for d in (root, self.blobs):
            d.mkdir(parents=True, exist_ok=True)
        self._owner = open(root / "lock", "a")  # held for the journal's life; the kernel drops it on death
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SystemExit(f"another relay is using the journal {root}; give each relay its own") from None
        shutil.rmtree(self.spool, ignore_errors=True)  # uploads cut off mid-body; never acknowledged
        self.spool.mkdir()
        self.done_seq = int(self._cursor.read_text()) if self._cursor.exists() else 0
        self._read_at = 0  # offset of the first record not yet done
        self.backlog = 0  # values in the pending records (``Write.values``)
        self._unsynced = threading.Event()  # appended without an fsync (``sync_behind``)
        self._recover()
        self._file = open(self._path, "ab")  # held for the journal's life
        if self.pending == 0:
            self._reset()

    def _recover(self) -> None:
        self.next_seq = self.done_seq + 1
        if not self._path.exists():
            return
        good, first_pending = 0, None
        with open(self._path, "rb") as f:
            for line in f:
                try:
                    record: dict[str, Any] = json.loads(line) if line.endswith(b"\n") else {}
                except ValueError:
                    record = {}
                seq = record.get("seq")
                if seq is None:
                    break
                if seq > self.done_seq:
                    first_pending = good if first_pending is None else first_pending
                    self.backlog += record.get("values", 1)
                good += len(line)
                self.next_seq = max(self.next_seq, seq + 1)
        if good < self._path.stat().st_size:
            log.warning("journal: dropping a torn last record; its client never heard success")
            os.truncate(self._path, good)
        self._read_at = good if first_pending is None else first_pending
        for blob in self.blobs.iterdir():  # done, or renamed in just before a crash cut its record off
            if not self.done_seq < int(blob.stem) < self.next_seq:
                blob.unlink()

    @property
    def pending(self) -> int:
        return self.next_seq - 1 - self.done_seq

    def spool_file(self) -> Path:
        return self.spool / uuid.uuid4().hex

    def append(self, write: Write, durable: bool = True) -> None:
        """``durable``: fsync'd before this returns. Otherwise the record is in the kernel once
        this returns (a SIGKILL of the relay or the job loses nothing) and ``sync_behind`` fsyncs
        it within ``SYNC_S``: only a crash of the host can take the records of that moment."""
        with self._lock:
            write.seq = self.next_seq
            write.values = write.count_values()
            record = {
                "seq": write.seq,
                "method": write.method,
                "target": write.target,
                "headers": write.headers,
                "doubt": write.doubt,
                "values": write.values,
            }
            if write.blob is not None:
                blob = self.blobs / f"{write.seq}.bin"
                with open(write.blob, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(write.blob, blob)
                _fsync_dir(self.blobs)
                write.blob = blob
                record["blob"] = blob.name
            else:
                record["body"] = write.body.decode("utf-8", "surrogateescape")
            self._file.write(json.dumps(record).encode() + b"\n")
            self._file.flush()
            if durable:
                os.fsync(self._file.fileno())
            else:
                self._unsynced.set()
            self.next_seq += 1
            self.backlog += write.values

    def sync_behind(self, stop: threading.Event) -> None:
        """One fsync for all the records appended in the last ``SYNC_S`` without one (``append``)."""
        while not stop.is_set():
            if self._unsynced.wait(1):
                stop.wait(SYNC_S)
                self._unsynced.clear()
                os.fsync(self._file.fileno())

    def wake_syncer(self) -> None:
        """``sync_behind`` looks at its stop now, not within the second (a job's end waits on it)."""
        self._unsynced.set()

    def peek(self, limit: int) -> "list[Write]":
        """Up to ``limit`` of the oldest pending writes, in order, without consuming them."""
        with self._lock:
            count = min(limit, self.pending)
            if not count:
                return []
            with open(self._path, "rb") as f:
                f.seek(self._read_at)
                lines = [f.readline() for _ in range(count)]
        out = []
        for line in lines:
            r = json.loads(line)
            blob = self.blobs / r["blob"] if "blob" in r else None
            body = r.get("body", "").encode("utf-8", "surrogateescape")
            w = Write(r["method"], r["target"], r["headers"], body, blob, r["seq"], r["doubt"])
            w.values = r.get("values", 1)
            out.append(w)
        return out

    def done(self, writes: "list[Write]") -> None:
        """Marks the oldest pending writes acknowledged; only ever after the server's answer."""
        last = writes[-1].seq
        tmp = self._cursor.with_suffix(".tmp")  # one replay thread writes it: no lock, appends go on
        with open(tmp, "w") as f:
            f.write(str(last))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._cursor)
        _fsync_dir(self.root)
        with self._lock:
            self.done_seq = last
            self.backlog -= sum(w.values for w in writes)
            with open(self._path, "rb") as f:
                f.seek(self._read_at)
                for _ in writes:
                    self._read_at += len(f.readline())
            for w in writes:
                if w.blob is not None and w.blob.exists():  # unlink(missing_ok=) is 3.8+
                    w.blob.unlink()
            if self.pending == 0:
                self._reset()

    def _reset(self) -> None:
        """Empties a fully drained journal; the cursor keeps counting, so no seq is ever reused.
        Not fsync'd: after a crash the old records may reappear, and are skipped as done."""
        self._file.truncate(0)
        self._read_at = 0
        self.backlog = 0

    def reject(self, writes: "list[Write]", status: int, answer: bytes) -> None:
        with self._lock, open(self.root / "rejected.jsonl", "ab") as f:
            for w in writes:
                entry = {
                    "seq": w.seq,
                    "target": w.target,
                    "status": status,
                    "answer": answer.decode(errors="replace"),
                    "body": w.body.decode(errors="replace"),
                }
                f.write(json.dumps(entry).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        log.error(
            "upstream refused %d journaled write(s) with %d; kept in rejected.jsonl", len(writes), status
        )

    def rejected(self) -> int:
        path = self.root / "rejected.jsonl"
        if not path.exists():
            return 0
        with open(path, "rb") as f:
            return sum(1 for _ in f)

    def close(self) -> None:
        self._file.close()
        self._owner.close()


class Upstream:
    """The tracking server, over a small pool of keep-alive connections."""

    def __init__(self, url: str, timeout: float, auth: "str | None") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SystemExit(f"--upstream must be an http(s) URL such as http://127.0.0.1:5000, not {url!r}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self.timeout = timeout
        self._auth = auth
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()
        self._refused = ""

    def _take(self) -> "tuple[http.client.HTTPConnection, bool]":
        with self._lock:
            while self._idle:
                since, conn = self._idle.pop()
                # A connection the server already closed reads as ready (EOF): sending on it would fail
                # after the fact, and a write would then be in doubt for nothing.
                if time.monotonic() - since < _IDLE_S and not select.select([conn.sock], [], [], 0)[0]:
                    return conn, True
                conn.close()
        if self._https:
            cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
            ctx = ssl.create_default_context(cafile=cafile)
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.connect()
        except OSError as exc:
            raise Unreached(f"{self._host}:{self._port}: {exc}") from exc
        refusal = foreign_listener(conn.sock)
        if refusal:  # checked once connected, before a byte of the request: no window to swap listeners
            conn.close()
            if refusal != self._refused:  # once per change: replay retries every few seconds
                log.warning("%s", refusal)
            self._refused = refusal
            raise Unreached(refusal)
        self._refused = ""
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a file body follows its headers
        return conn, False

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append((time.monotonic(), conn))

    def open(
        self, write: Write, retry: bool = False
    ) -> "tuple[http.client.HTTPConnection, http.client.HTTPResponse]":
        """Sends ``write``; ``retry`` (reads only) tries again on a fresh connection if a kept one died."""
        conn, reused = self._take()
        headers = dict(write.headers)
        if self._auth:
            headers["Authorization"] = self._auth
        try:
            if write.blob is not None:
                headers["Content-Length"] = str(write.blob.stat().st_size)
                with open(write.blob, "rb") as body:
                    conn.request(write.method, self._base + write.target, body, headers)
            else:
                conn.request(write.method, self._base + write.target, write.body or None, headers)
            return conn, conn.getresponse()
        except OSError as exc:  # timeouts, resets and http.client's RemoteDisconnected are all OSErrors
            conn.close()
            if retry and reused:
                return self.open(write)
            raise Unanswered(f"{self._host}:{self._port}: {exc or type(exc).__name__}") from exc

    def send(self, write: Write, retry: bool = False) -> "tuple[int, dict[str, str], bytes]":
        conn, resp = self.open(write, retry)
        try:
            data = resp.read()
        except OSError as exc:
            conn.close()
            raise Unanswered(str(exc)) from exc
        self._give(conn)
        return resp.status, dict(resp.getheaders()), data

    def release(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        if resp.isclosed():
            self._give(conn)
        else:
            conn.close()


_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_PROC_TCP = ("/proc/net/tcp", "/proc/net/tcp6")


def _proc_address(field: str) -> "tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]":
    """An address from /proc/net/tcp(6): hex of the kernel's 32-bit words, each little-endian."""
    hex_address, _, hex_port = field.partition(":")
    raw = bytes.fromhex(hex_address)
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(ordered)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, int(hex_port, 16)


def foreign_listener(sock: socket.socket) -> str:
    """Why not to send on ``sock`` ("" when nothing speaks against it): connected to a port on this
    machine's loopback whose listening socket another user owns, or that nobody listens on any more.

    A loopback port proves nothing about who serves it: once the tracking server (the embedded
    default's, or the runner's SSH forward on a host) lets its port go, any local user may bind
    it and would receive the job's writes with their credentials. The kernel lists every
    socket's owner in /proc/net/tcp and tcp6; where those are missing (not Linux) the check
    cannot be made and nothing is refused (docs/relay.md)."""
    peer = sock.getpeername()
    address = ipaddress.ip_address(peer[0].partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_loopback:
        return ""
    tables = [t for t in _PROC_TCP if os.path.exists(t)]
    if not tables:
        return ""
    owners = set()
    needle = f":{peer[1]:04X} "  # the port as the tables write it: most lines are skipped unparsed
    for table in tables:
        with open(table) as f:
            next(f)  # the header
            for line in f:
                if needle not in line:
                    continue
                fields = line.split()
                if len(fields) < 8 or fields[3] != _LISTEN:
                    continue
                local, port = _proc_address(fields[1])
                if port == peer[1] and (local == address or local.is_unspecified):
                    owners.add(int(fields[7]))
    where = f"{peer[0]}:{peer[1]}"
    if not owners:
        return f"{where}: no listening socket of this machine serves it any more; not sending"
    if owners != {os.getuid()}:
        others = ", ".join(str(uid) for uid in sorted(owners - {os.getuid()}))
        return f"{where} is served by another user (uid {others}), not the tracking server; not sending"
    return ""


def _metric_id(m: "dict[str, Any]") -> "tuple[Any, ...]":
    return m["key"], int(m.get("step", 0)), int(m["timestamp"]), repr(float(m["value"]))


def _as_metrics(w: Write) -> "tuple[str, list[dict[str, Any]]] | None":
    """(run_id, metrics) if ``w`` carries well-formed metrics only, which replay may merge into one
    log-batch; anything else is sent as the client sent it, and the server judges it."""
    try:
        body = w.json()
        if w.endpoint == "runs/log-metric":
            run_id, metrics = body.pop("run_id", None) or body.get("run_uuid"), [body]
            body.pop("run_uuid", None)
        elif w.endpoint == "runs/log-batch" and not body.get("params") and not body.get("tags"):
            run_id, metrics = body.get("run_id"), body.get("metrics", [])
        else:
            return None
        for m in metrics:
            _metric_id(m)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return (run_id, metrics) if isinstance(run_id, str) else None


class Relay:
    def __init__(self, upstream: Upstream, journal: Journal) -> None:
        self.upstream = upstream
        self.journal = journal
        self.last_error = ""
        self._runs: dict[str, tuple[dict[str, str], bytes]] = {}
        self._order = threading.Lock()  # a live write and a journaled one never overtake each other
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._delivered = threading.Condition()  # replay got an answer, or none: ``catch_up`` looks again
        self._down = False  # the last try to reach the server failed
        self._hurry = threading.Event()  # someone waits for the backlog: replay gathers no more
        self._thread = threading.Thread(target=self._replay, name="replay", daemon=True)
        self._syncer = threading.Thread(target=journal.sync_behind, args=(self._stop,), daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._syncer.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._hurry.set()
        self.journal.wake_syncer()
        self._thread.join(timeout=30)
        self._syncer.join(timeout=30)  # its last fsync: the records written behind are on disk

    def _reached(self, up: bool) -> None:
        with self._delivered:
            if not up and not self._down:  # once an outage, not every retry
                log.warning("upstream unavailable (%s); journaling writes", self.last_error)
            self._down = not up
            self._delivered.notify_all()

    def catch_up(self) -> None:
        """Every request but a metric write sees the server as the job left it: while the server
        answers, it waits until the metrics journaled before it are delivered (at most the
        upstream's timeout). During an outage it does not wait: it queues behind them."""
        deadline = time.monotonic() + self.upstream.timeout
        with self._delivered:
            while self.journal.pending and not self._down:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._hurry.set()
                self._delivered.wait(left)
            self._hurry.clear()

    def status(self) -> "dict[str, Any]":
        return {
            "pending": self.journal.backlog,
            "writes": self.journal.pending,
            "rejected": self.journal.rejected(),
            "last_error": self.last_error,
        }

    def write(self, w: Write) -> "tuple[int, dict[str, str], bytes]":
        """Metric writes (a training loop's every step) are written behind: journaled at once,
        without waiting for an fsync (``Journal.append``), answered, and delivered in batches by
        replay, so the job never waits for the server. Every other write goes to the server
        while it answers and nothing is queued before it, and is journaled (fsync'd) otherwise."""
        if _as_metrics(w) is not None:
            with self._order:
                self.journal.append(w, durable=False)
            self._wake.set()
            return 200, {"Content-Type": "application/json"}, b"{}"
        self.catch_up()
        with self._order:
            if self.journal.pending == 0:
                try:
                    status, headers, data = self.upstream.send(w)
                except Unreached as exc:
                    self.last_error = str(exc)
                except Unanswered as exc:
                    self.last_error, w.doubt = str(exc), True
                else:
                    if status < 500 and status != 429:
                        if w.blob is not None:
                            w.blob.unlink()
                        return status, headers, data
                    self.last_error, w.doubt = f"HTTP {status}", status != 429
                self._reached(False)
            self.journal.append(w)
        self._wake.set()
        return 200, {"Content-Type": "application/json"}, json.dumps(_ack(w)).encode()

    def get_run(self, w: Write) -> "tuple[int, dict[str, str], bytes]":
        """Falls back on the run's last good answer while the server is away: a job reads its run at
        start and again to learn where its artifacts go, and an outage must not stall it there."""
        query = parse_qs(urlsplit(w.target).query)
        run_id = (query.get("run_id") or query.get("run_uuid") or [""])[0]
        try:
            status, headers, data = self.upstream.send(w, retry=True)
            if status < 500:
                if status == 200:
                    self._runs[run_id] = (headers, data)
                return status, headers, data
            self.last_error = f"HTTP {status}"
        except (Unreached, Unanswered) as exc:
            self.last_error = str(exc)
        if run_id in self._runs:
            headers, data = self._runs[run_id]
            return 200, headers, data
        return _unavailable(self.last_error)

    def _replay(self) -> None:
        in_doubt = True  # the oldest record may have been in flight when an earlier relay died
        delay = 0.2
        alone_until = 0  # records up to this seq go one by one: a merged batch of them was refused
        outage = False  # "journal drained" is said after one, not after every batch
        gathered = False
        while not self._stop.is_set():
            pending = self.journal.peek(1)
            if pending and pending[0].seq > alone_until and _as_metrics(pending[0]):
                pending = self.journal.peek(_BATCH)
            if not pending:
                in_doubt = False
                self._wake.wait(5)
                self._wake.clear()
                continue
            unit, covered = _merge(pending)
            if not gathered and len(covered) == self.journal.pending < _BATCH:
                # a job logging now: a moment more makes one request of its next steps too
                gathered = True
                if _as_metrics(covered[0]) and not self._hurry.is_set():
                    self._hurry.wait(GATHER_S)
                    continue
            gathered = False
            try:
                status, _, data = self._deliver(unit, in_doubt or any(w.doubt for w in covered))
            except (Unreached, Unanswered) as exc:
                in_doubt = in_doubt or isinstance(exc, Unanswered)
                self.last_error = str(exc)
            except Exception as exc:  # a bug must not end replay silently: keep retrying, loudly
                log.exception("replay failed")
                self.last_error = f"replay failed: {exc!r}"
            else:
                if status < 500 and status != 429:
                    if status >= 300 and len(covered) > 1:
                        alone_until = covered[-1].seq  # let each record get its own answer
                        continue
                    if status >= 300:
                        self.journal.reject(covered, status, data)
                    self.journal.done(covered)
                    self._reached(True)
                    in_doubt, delay = False, 0.2
                    if self.journal.pending == 0 and outage:
                        log.info("journal drained")
                        outage = False
                    continue
                in_doubt = in_doubt or status != 429
                self.last_error = f"HTTP {status}"
            self._reached(False)
            outage = True
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _deliver(self, unit: Write, in_doubt: bool) -> "tuple[int, dict[str, str], bytes]":
        if not in_doubt or unit.endpoint != "runs/log-batch":
            return self.upstream.send(unit)
        try:
            body = unit.json()
            run_id, metrics = body["run_id"], body.get("metrics") or []
            for m in metrics:
                _metric_id(m)
        except (ValueError, TypeError, KeyError, AttributeError):
            return self.upstream.send(unit)  # malformed: the server's answer says so, once
        if not metrics:
            return self.upstream.send(unit)
        known: set[tuple[Any, ...]] = set()
        for key in {m["key"] for m in metrics}:
            known |= self._history(unit, run_id, key)
        body["metrics"] = [m for m in metrics if _metric_id(m) not in known]
        if not any(body.get(k) for k in ("metrics", "params", "tags")):
            return 200, {}, b"{}"
        return self.upstream.send(Write(unit.method, unit.target, unit.headers, json.dumps(body).encode()))

    def _history(self, unit: Write, run_id: str, key: str) -> "set[tuple[Any, ...]]":
        root = unit.target[: unit.target.index("/mlflow/") + len("/mlflow/")]
        seen: set[tuple[Any, ...]] = set()
        token = ""
        while True:
            query = {"run_id": run_id, "metric_key": key, **({"page_token": token} if token else {})}
            get = Write("GET", f"{root}metrics/get-history?{urlencode(query)}", unit.headers)
            status, _, data = self.upstream.send(get)
            if status >= 500 or status == 429:
                raise Unanswered(f"metrics/get-history answered HTTP {status}")
            if status != 200:  # no such run, say: sending the unit gets the server's definite answer
                return seen
            page = json.loads(data)
            seen |= {_metric_id(m) for m in page.get("metrics", [])}
            token = page.get("next_page_token", "")
            if not token:
                return seen


def _merge(pending: "list[Write]") -> "tuple[Write, list[Write]]":
    """The next unit to send, and the journal records it covers: metrics-only writes for one run
    are merged into one log-batch, anything else goes alone."""
    first = pending[0]
    head = _as_metrics(first)
    if head is None:
        return first, [first]
    run_id, metrics = head[0], list(head[1])
    covered = [first]
    for w in pending[1:]:
        more = _as_metrics(w)
        if more is None or more[0] != run_id or len(metrics) + len(more[1]) > _BATCH:
            break
        metrics += more[1]
        covered.append(w)
    root = first.target[: first.target.index("/mlflow/") + len("/mlflow/")]
    body = json.dumps({"run_id": run_id, "metrics": metrics}).encode()
    return Write("POST", root + "runs/log-batch", first.headers, body, seq=first.seq), covered


def _unavailable(why: str) -> "tuple[int, dict[str, str], bytes]":
    body = {
        "error_code": "TEMPORARILY_UNAVAILABLE",
        "message": f"hml relay: tracking server unavailable: {why}",
    }
    return 503, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _ack(w: Write) -> "dict[str, Any]":
    """The answer MLflow's client expects from a write the server has not seen yet."""
    if w.endpoint == "runs/update":
        req = w.json()
        keys = ("run_id", "run_uuid", "status", "end_time", "run_name")
        return {"run_info": {k: req[k] for k in keys if k in req}}
    return {}


_API = "/api/2.0/mlflow/"
_MODEL = r"logged-models/(m-[0-9a-f]+)"
_RUN_WRITES = (
    r"runs/(update|log-metric|log-batch|log-parameter|set-tag|delete-tag|log-inputs|outputs|log-model)"
)
_ROUTES = tuple(
    (method, re.compile(endpoint), kind)
    for method, endpoint, kind in (
        # what a job's MLflow client calls (mlflow.start_run, log_*, set_tag, log_artifact,
        # <flavor>.log_model, download_artifacts, set_experiment, search_*): nothing else
        ("GET", r"runs/get", "read"),
        ("POST", r"runs/search", "read"),
        ("POST", r"runs/create", "new-run"),
        ("POST", _RUN_WRITES, "run"),
        ("GET", r"metrics/get-history", "read"),
        ("GET", r"experiments/(get|get-by-name|search)", "read"),
        ("POST", r"experiments/(create|search)", "read"),
        ("POST", r"logged-models", "new-model"),
        ("POST", r"logged-models/search", "read"),
        ("GET", _MODEL, "read"),
        ("PATCH", _MODEL, "model"),
        ("PATCH", _MODEL + r"/tags", "model"),
        ("POST", _MODEL + r"/params", "model"),
    )
)
REDACTED = "***"
"""What a secret value becomes (as in redact_stream.py, the job's output filter)."""
REDACTED_NAME = "REDACTED"
"""What a secret in a param, tag or metric *name* becomes: MLflow refuses ``*`` in names."""
MIN_SECRET_LEN = 4
"""As in redact_stream.py: shorter values are too common to replace."""
_SNIFF = 8192


class Access:
    """Whom the relay serves and what it lets through: the job's own token (``MLFLOW_TRACKING_TOKEN``
    of the job's environment, made by the runner for this attempt), the MLflow paths a job's
    client needs (``_ROUTES``), writes to the job's own runs and logged models only, and secret
    values replaced in what the job logs before it is journaled or sent."""

    def __init__(self, token: str, run_id: str, secrets: "list[str]") -> None:
        self._token = token.encode()
        self.runs = {run_id} if run_id else set()  # ... and those the job creates through the relay
        self.models: set[str] = set()
        self.artifacts: set[str] = set()  # their artifact directories, as the server names them
        values = {s for s in secrets if len(s) >= MIN_SECRET_LEN}
        self.secrets = sorted(values, key=len, reverse=True)  # a secret containing another goes whole

    def admits(self, authorization: "str | None") -> bool:
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token)

    def route(self, method: str, path: str) -> "tuple[str, str] | None":
        """(kind, the id in the path) of an allowed request, None for everything else."""
        if path == _ARTIFACTS.rstrip("/") or path.startswith(_ARTIFACTS):
            return ("artifact", "") if method in ("GET", "PUT") else None
        if not path.startswith(_API):
            return None
        endpoint = path[len(_API) :]
        for allowed, pattern, kind in _ROUTES:
            match = pattern.fullmatch(endpoint)
            if match and allowed == method:
                return kind, match.group(1) if kind == "model" else ""
        return None

    def refusal(self, kind: str, ident: str, w: Write) -> str:
        """Why a routed request is not the job's own business ("" when it is)."""
        if kind == "model" and ident not in self.models:
            return f"logged model {ident} was not created by this job"
        if kind == "run":
            try:
                body = w.json()
                run_id = body.get("run_id") or body.get("run_uuid")
            except (ValueError, AttributeError):
                return ""  # not JSON: the server says what is wrong with it
            if run_id not in self.runs:
                return f"run {run_id} is not this job's"
        if kind == "artifact":
            query = parse_qs(urlsplit(w.target).query)
            path = unquote(urlsplit(w.target).path)[len(_ARTIFACTS) :] or (query.get("path") or [""])[0]
            parts = unquote(path).split("/")  # twice: a server that decodes again sees no ".." either
            if ".." in parts or "." in parts:
                return "artifact paths may not step out of their directory"
            if not any(path == root or path.startswith(root + "/") for root in self.artifacts):
                return "artifacts of other runs and models are not this job's"
        return ""

    def learn(self, kind: str, data: bytes) -> None:
        """A run or logged model the job created is the job's own: it may log to it, and to its
        artifact directory, which the server names in its answer (and in ``runs/get`` of the
        job's own runs, which a client reads before it uploads)."""
        try:
            answer = json.loads(data)
            if kind in ("new-run", "read-run"):
                info = answer["run"]["info"]
                if kind == "new-run":
                    self.runs.add(info["run_id"])
                elif info["run_id"] not in self.runs:
                    return
            else:
                info = answer["model"]["info"]
                self.models.add(info["model_id"])
            root = urlsplit(info["artifact_uri"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if root.scheme == "mlflow-artifacts":  # served through the proxy: reached through this relay
            self.artifacts.add(root.path.strip("/"))

    def redact_body(self, w: Write) -> None:
        """Secret values out of the names and values a write logs (params, tags, metric names,
        run names); the JSON is decoded first, so escaping inside it hides nothing."""
        if not self.secrets or not w.body:
            return
        try:
            body = json.loads(w.body)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        changed = self._redact_item(body)
        for field in ("params", "tags", "metrics"):
            items = body.get(field)
            if isinstance(items, list):
                found = [self._redact_item(item) for item in items if isinstance(item, dict)]
                changed = any(found) or changed
        if changed:
            w.body = json.dumps(body).encode()

    def _redact_item(self, item: "dict[str, Any]") -> bool:
        changed = False
        for field, marker in (("key", REDACTED_NAME), ("value", REDACTED), ("run_name", REDACTED)):
            value = item.get(field)
            if isinstance(value, str):
                clean = self._redact(value, marker)
                if clean != value:
                    item[field], changed = clean, True
        return changed

    def _redact(self, text: str, marker: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, marker)
        return text

    def redact_file(self, path: Path) -> None:
        """Secret values out of a text artifact, rewritten in place (streamed: any size). Binary
        files (a NUL or invalid UTF-8 in their first 8 KiB, as git decides) are left as they are:
        a model's weights may contain any bytes, and replacing some would corrupt it."""
        if not self.secrets:
            return
        with open(path, "rb") as f:
            head = f.read(_SNIFF)
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 3:  # not just a character cut by the sniff's end
                return
        if b"\0" in head:
            return
        secrets = [s.encode() for s in self.secrets]
        keep = len(secrets[0]) - 1  # a secret cut by a chunk's end is completed by the next chunk
        clean = path.with_name(path.name + ".redacted")
        with open(path, "rb") as src, open(clean, "wb") as dst:
            buf = b""
            for chunk in iter(lambda: src.read(1 << 20), b""):
                buf = _replace(buf + chunk, secrets)
                cut = max(0, len(buf) - keep)
                dst.write(buf[:cut])
                buf = buf[cut:]
            dst.write(_replace(buf, secrets))
        os.replace(clean, path)


def _replace(data: bytes, secrets: "list[bytes]") -> bytes:
    for secret in secrets:
        data = data.replace(secret, REDACTED.encode())
    return data


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the second
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per request would drown the job's own output."""

    def _handle(self) -> None:
        access = self.server.access
        if not access.admits(self.headers.get("Authorization")):  # the status too: it tells nothing to others
            return self._refuse(401, "UNAUTHENTICATED", f"this relay serves one job; send its {TOKEN}")
        path = self.path.partition("?")[0]
        if path == STATUS_PATH:
            return self._answer(
                200, {"Content-Type": "application/json"}, json.dumps(self.server.relay.status()).encode()
            )
        route = access.route(self.command, path)
        if route is None:
            why = f"a job's relay does not forward {self.command} {path}"
            return self._refuse(403, "PERMISSION_DENIED", why)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._answer(411, {}, b"the relay needs a Content-Length")
        length = int(self.headers.get("Content-Length") or 0)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROP}
        w = Write(self.command, self.path, headers)
        refusal = access.refusal(*route, w)  # before the body: nothing is spooled for a refused upload
        if refusal and route[0] != "run":
            return self._refuse(403, "PERMISSION_DENIED", refusal)
        body = _Limited(self.rfile, length)
        if self.command == "PUT":
            w.blob = self.server.relay.journal.spool_file()
            with open(w.blob, "wb") as f:
                shutil.copyfileobj(body, f)
        else:
            w.body = body.read()
        if body.left:  # the client went away mid-body: nothing to answer, nothing to keep
            if w.blob is not None:
                w.blob.unlink()
            self.close_connection = True
            return None
        refusal = access.refusal(*route, w) if route[0] == "run" else ""  # the run is named in the body
        if refusal:
            return self._refuse(403, "PERMISSION_DENIED", refusal)
        if w.blob is not None:
            access.redact_file(w.blob)
        else:
            access.redact_body(w)
        if is_write(self.command, path):
            return self._answer(*self.server.relay.write(w))
        self.server.relay.catch_up()  # a read sees the job's own metrics
        if self.command == "GET" and w.endpoint == "runs/get":
            status, headers, data = self.server.relay.get_run(w)
            if status == 200:
                access.learn("read-run", data)
            return self._answer(status, headers, data)
        if route[0] in ("new-run", "new-model"):
            return self._answer(*self._create(w, route[0]))
        self._forward(w)

    def _create(self, w: Write, kind: str) -> "tuple[int, dict[str, str], bytes]":
        relay = self.server.relay
        try:
            status, headers, data = relay.upstream.send(w)
        except (Unreached, Unanswered) as exc:
            relay.last_error = str(exc)
            return _unavailable(str(exc))
        if status == 200:
            self.server.access.learn(kind, data)
        return status, headers, data

    def _refuse(self, status: int, code: str, why: str) -> None:
        if status == 403:  # the job's own request: its relay.log says what was not let through
            log.warning("refused: %s", why)
        body = json.dumps({"error_code": code, "message": f"hml relay: {why}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="hml relay"')
        self.send_header("Connection", "close")  # its body, if any, is left unread
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, w: Write) -> None:
        relay = self.server.relay
        try:
            conn, resp = relay.upstream.open(w, retry=True)
        except (Unreached, Unanswered) as exc:
            relay.last_error = str(exc)
            return self._answer(*_unavailable(str(exc)))
        try:
            headers = {k: v for k, v in resp.getheaders() if k.lower() not in _DROP}
            length = resp.getheader("Content-Length")
            if length is None:  # a chunked answer: hand it on whole
                return self._answer(resp.status, headers, resp.read())
            self.send_response(resp.status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", length)
            self.end_headers()
            shutil.copyfileobj(resp, self.wfile)
        finally:
            relay.upstream.release(conn, resp)

    def _answer(self, status: int, headers: "dict[str, str]", body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in _DROP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Limited:
    """A reader that stops after the request body, so a kept-alive connection's next request is not read."""

    def __init__(self, raw: io.BufferedIOBase, left: int) -> None:
        self._raw, self.left = raw, left

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self._raw.read(n) if n else b""
        self.left -= len(data)
        return data


class _Server(socketserver.ThreadingMixIn, HTTPServer):  # http.server's ThreadingHTTPServer is 3.7+
    daemon_threads = True
    relay: Relay
    access: Access


CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
"""MLflow's own names for a tracking server's credentials."""
TOKEN = "MLFLOW_TRACKING_TOKEN"
"""In the job's environment: the job's token for its relay (MLflow's client sends it as a bearer)."""


def auth_header(credentials: "dict[str, str]") -> "str | None":
    """The upstream's ``Authorization``, from credentials by MLflow's names, as its client makes it."""
    user, password = credentials.get("MLFLOW_TRACKING_USERNAME"), credentials.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    token = credentials.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return f"Bearer {token}"
    return None


def read_credentials(text: str) -> "dict[str, str]":
    """``NAME=VALUE`` shell words (the wrapper's ``HML_RELAY_CREDENTIALS``) by MLflow's names."""
    found = {}
    for word in shlex.split(text):
        name, _, value = word.partition("=")
        if name not in CREDENTIALS:
            raise SystemExit(f"unknown credential {name!r} on stdin; expected {', '.join(CREDENTIALS)}")
        found[name] = value
    return found


def main(argv: "list[str] | None" = None, listener: "socket.socket | None" = None) -> None:
    """``listener``: a socket already listening (``hmlkit.node.jobscript.RELAY_BOOT``: the job's
    wrapper learns the port before this module's imports, and connections wait in the
    socket's backlog until it serves)."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--upstream", required=True, help="the tracking server, e.g. http://10.0.0.5:5000")
    parser.add_argument(
        "--journal", required=True, type=Path, help="directory for the journal (kept across restarts)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (printed)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the upstream")
    parser.add_argument(
        "--credentials-stdin",
        action="store_true",
        help="read the upstream's credentials from stdin (NAME=VALUE shell words, MLflow's names)",
    )
    parser.add_argument(
        "--redact",
        nargs="*",
        default=[],
        metavar="NAME",
        help="environment variables whose values are replaced in what the job logs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="hml-relay: %(message)s")
    # a job's write waits for the GIL while replay works (5 ms by default): answer it sooner
    sys.setswitchinterval(0.0005)
    token = os.environ.get(TOKEN, "")
    if len(token) < 16:
        raise SystemExit(f"the relay serves one job: set {TOKEN} to that job's token (16 characters or more)")
    credentials = read_credentials(sys.stdin.read()) if args.credentials_stdin else {}
    secrets = [os.environ.get(name, "") for name in args.redact] + list(credentials.values())
    access = Access(token, os.environ.get("MLFLOW_RUN_ID", ""), secrets)

    relay = Relay(Upstream(args.upstream, args.timeout, auth_header(credentials)), Journal(args.journal))
    if listener is None:
        server = _Server((args.host, args.port), _Handler)
    else:
        server = _Server(listener.getsockname(), _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listener
    server.relay, server.access = relay, access
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    relay.start()
    if listener is None:
        print(json.dumps({"port": server.server_address[1], "pending": relay.journal.pending}), flush=True)
    try:
        server.serve_forever(poll_interval=0.05)  # a stop (the job ended) is seen at once
    finally:
        server.server_close()
        relay.stop()
        relay.journal.close()


if __name__ == "__main__":
    main()
