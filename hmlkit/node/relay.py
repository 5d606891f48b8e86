"""A journaling relay for the MLflow REST API that runs beside each job, so no write is lost to an outage.

The job's ``MLFLOW_TRACKING_URI`` points here. Reads go straight through. A write (see ``_WRITES``)
goes through while the server answers; when it does not (refused, timeout, 5xx), the relay appends
the write to a journal on disk, fsyncs it, and answers the client with the success MLflow expects, so
a training loop never blocks on or dies of the tracking server. A background thread replays the
journal in order once the server is back; while a backlog exists, new writes queue behind it, so the
server sees the writes in the order the job made them.

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

from __future__ import annotations

import argparse
import base64
import fcntl
import http.client
import io
import json
import logging
import os
import select
import shutil
import signal
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

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
_IDLE_S = 2.0  # shorter than the keep-alive of the servers MLflow ships with (uvicorn: 5 s)


class Unreached(Exception):
    """The request never reached the server: it cannot have been applied."""


class Unanswered(Exception):
    """The request may have reached the server, but no answer came: it may have been applied."""


@dataclass
class Write:
    method: str
    target: str  # path and query, as the client sent them
    headers: dict[str, str]
    body: bytes = b""
    blob: Path | None = None  # the body on disk instead, for artifact uploads
    seq: int = 0
    doubt: bool = False

    @property
    def endpoint(self) -> str:
        path = self.target.partition("?")[0]
        return next((path[len(root) :] for root in _API_ROOTS if path.startswith(root)), "")

    def json(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body or b"{}")
        return loaded


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
                    seq = json.loads(line)["seq"] if line.endswith(b"\n") else None
                except ValueError:
                    seq = None
                if seq is None:
                    break
                if seq > self.done_seq and first_pending is None:
                    first_pending = good
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

    def append(self, write: Write) -> None:
        with self._lock:
            write.seq = self.next_seq
            record = {
                "seq": write.seq,
                "method": write.method,
                "target": write.target,
                "headers": write.headers,
                "doubt": write.doubt,
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
            os.fsync(self._file.fileno())
            self.next_seq += 1

    def peek(self, limit: int) -> list[Write]:
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
            out.append(Write(r["method"], r["target"], r["headers"], body, blob, r["seq"], r["doubt"]))
        return out

    def done(self, writes: list[Write]) -> None:
        """Marks the oldest pending writes acknowledged; only ever after the server's answer."""
        with self._lock:
            last = writes[-1].seq
            tmp = self._cursor.with_suffix(".tmp")
            with open(tmp, "w") as f:
                f.write(str(last))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._cursor)
            _fsync_dir(self.root)
            self.done_seq = last
            with open(self._path, "rb") as f:
                f.seek(self._read_at)
                for _ in writes:
                    self._read_at += len(f.readline())
            for w in writes:
                if w.blob is not None:
                    w.blob.unlink(missing_ok=True)
            if self.pending == 0:
                self._reset()

    def _reset(self) -> None:
        """Empties a fully drained journal; the cursor keeps counting, so no seq is ever reused."""
        self._file.truncate(0)
        os.fsync(self._file.fileno())
        self._read_at = 0

    def reject(self, writes: list[Write], status: int, answer: bytes) -> None:
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

    def __init__(self, url: str, timeout: float, auth: str | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SystemExit(f"--upstream must be an http(s) URL such as http://127.0.0.1:5000, not {url!r}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._timeout = timeout
        self._auth = auth
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
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
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.connect()
        except OSError as exc:
            raise Unreached(f"{self._host}:{self._port}: {exc}") from exc
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a file body follows its headers
        return conn, False

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append((time.monotonic(), conn))

    def open(
        self, write: Write, retry: bool = False
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
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

    def send(self, write: Write, retry: bool = False) -> tuple[int, dict[str, str], bytes]:
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


def _metric_id(m: dict[str, Any]) -> tuple[Any, ...]:
    return m["key"], int(m.get("step", 0)), int(m["timestamp"]), repr(float(m["value"]))


def _as_metrics(w: Write) -> tuple[str, list[dict[str, Any]]] | None:
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
        self._thread = threading.Thread(target=self._replay, name="replay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def status(self) -> dict[str, Any]:
        return {
            "pending": self.journal.pending,
            "rejected": self.journal.rejected(),
            "last_error": self.last_error,
        }

    def write(self, w: Write) -> tuple[int, dict[str, str], bytes]:
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
                log.warning("upstream unavailable (%s); journaling writes", self.last_error)
            self.journal.append(w)
        self._wake.set()
        return 200, {"Content-Type": "application/json"}, json.dumps(_ack(w)).encode()

    def get_run(self, w: Write) -> tuple[int, dict[str, str], bytes]:
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
            return 200, *self._runs[run_id]
        return _unavailable(self.last_error)

    def _replay(self) -> None:
        in_doubt = True  # the oldest record may have been in flight when an earlier relay died
        delay = 0.2
        alone_until = 0  # records up to this seq go one by one: a merged batch of them was refused
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
                    in_doubt, delay = False, 0.2
                    if self.journal.pending == 0:
                        log.info("journal drained")
                    continue
                in_doubt = in_doubt or status != 429
                self.last_error = f"HTTP {status}"
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _deliver(self, unit: Write, in_doubt: bool) -> tuple[int, dict[str, str], bytes]:
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

    def _history(self, unit: Write, run_id: str, key: str) -> set[tuple[Any, ...]]:
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


def _merge(pending: list[Write]) -> tuple[Write, list[Write]]:
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


def _unavailable(why: str) -> tuple[int, dict[str, str], bytes]:
    body = {
        "error_code": "TEMPORARILY_UNAVAILABLE",
        "message": f"hml relay: tracking server unavailable: {why}",
    }
    return 503, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _ack(w: Write) -> dict[str, Any]:
    """The answer MLflow's client expects from a write the server has not seen yet."""
    if w.endpoint == "runs/update":
        req = w.json()
        keys = ("run_id", "run_uuid", "status", "end_time", "run_name")
        return {"run_info": {k: req[k] for k in keys if k in req}}
    return {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the second
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per request would drown the job's own output."""

    def _handle(self) -> None:
        path = self.path.partition("?")[0]
        if path == STATUS_PATH:
            return self._answer(
                200, {"Content-Type": "application/json"}, json.dumps(self.server.relay.status()).encode()
            )
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._answer(411, {}, b"the relay needs a Content-Length")
        length = int(self.headers.get("Content-Length") or 0)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROP}
        w = Write(self.command, self.path, headers)
        body = _Limited(self.rfile, length)
        if self.command == "PUT" and path.startswith(_ARTIFACTS):
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
        if is_write(self.command, path):
            return self._answer(*self.server.relay.write(w))
        if self.command == "GET" and w.endpoint == "runs/get":
            return self._answer(*self.server.relay.get_run(w))
        self._forward(w)

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

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    relay: Relay


def _auth_from_env() -> str | None:
    """The upstream's credentials, the way MLflow's own client reads them."""
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return f"Bearer {token}"
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return None


def main(argv: list[str] | None = None, listener: socket.socket | None = None) -> None:
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="hml-relay: %(message)s")

    relay = Relay(Upstream(args.upstream, args.timeout, _auth_from_env()), Journal(args.journal))
    if listener is None:
        server = _Server((args.host, args.port), _Handler)
    else:
        server = _Server(listener.getsockname(), _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listener
    server.relay = relay
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
