"""The job's MLflow client, sped up: metrics go to the relay in the background, a batch every 50 ms.

A plain ``mlflow.log_metric`` makes one HTTP request and waits for it: about a millisecond
through the relay, which on a fast GPU is a sixth of a training step. MLflow's own asynchronous
mode (``MLFLOW_ENABLE_ASYNC_LOGGING``) takes the request out of the loop, but drops what is still
queued when the program ends without ``mlflow.end_run()`` (its thread pool is shut down before
``atexit`` runs), and keeps up to a second in memory. This store keeps the metrics a job logs in a
list and a sender thread posts them to the relay as one ``log-batch`` every ``FLUSH_S``; the
thread is not a daemon, so the interpreter's exit waits for its last send. Everything else
(params, tags, run updates, reads) first sends the metrics before it, then goes as MLflow sends
it: the job's order holds, and a read sees the job's own metrics.

What a SIGKILL of the job can lose: the metrics of its last ``FLUSH_S`` and of the batch in
flight, which the relay answers at once (it journals before it forwards, hmlkit/node/relay.py).
docs/relay.md ("The fast path") has the measurements.

How it is loaded: MLflow builds a tracking store per URI scheme and lets a package replace the
builder (the ``mlflow.tracking_store`` entry point). The job wrapper (hmlkit/node/jobscript.py)
puts this file and a package's metadata naming it into a directory on the job's ``PYTHONPATH``;
for any URI but its relay's (``HML_RELAY_URI``) ``build`` makes MLflow's own store. It runs in
the job's interpreter, with the job's MLflow: no code of ours is imported by the user's code, and
a job without MLflow never loads it. ``TRACKING_FAST_LOGGING=0`` in the job's ``envs`` turns it off.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from functools import partial
from typing import Any

from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
from mlflow.store.tracking.rest_store import RestStore

try:
    from mlflow.utils.credentials import get_default_host_creds
except ImportError:  # MLflow 2
    from mlflow.tracking._tracking_service.utils import get_default_host_creds  # type: ignore[attr-defined]

FLUSH_S = 0.05
BATCH = 1000  # MLflow's limit on metrics in one log-batch


def build(store_uri: str, artifact_uri: str | None = None, **_: Any) -> RestStore:
    creds = partial(get_default_host_creds, store_uri)
    if store_uri.rstrip("/") == os.environ.get("HML_RELAY_URI", "").rstrip("/"):
        return BufferedRestStore(creds)
    return RestStore(creds)  # type: ignore[no-untyped-call]


_STORES: weakref.WeakSet[BufferedRestStore] = weakref.WeakSet()
"""Every buffered store of this process: an artifact upload sends their metrics first."""


class BufferedRestStore(RestStore):
    def __init__(self, get_host_creds: Any) -> None:
        super().__init__(get_host_creds)  # type: ignore[no-untyped-call]
        self._fresh()
        _STORES.add(self)

    def _fresh(self) -> None:
        """New state in a new process (a fork inherits the parent's metrics: the parent sends them)."""
        self._pid = os.getpid()
        self._pending: list[tuple[str, Any]] = []
        self._lock = threading.Lock()  # the list
        self._sending = threading.Lock()  # one send at a time: the job's order
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None

    def log_metric(self, run_id: str, metric: Any) -> None:
        self._add(run_id, [metric])

    def log_batch(self, run_id: str, metrics: Any, params: Any, tags: Any) -> None:
        if params or tags:
            self.flush()
            super().log_batch(run_id, metrics, params, tags)  # type: ignore[no-untyped-call]
        elif metrics:
            self._add(run_id, list(metrics))

    def _add(self, run_id: str, metrics: list[Any]) -> None:
        if self._pid != os.getpid():  # a forked child (a data loader's worker): its own list and thread
            self._fresh()
        with self._lock:
            self._pending += [(run_id, m) for m in metrics]
            full = len(self._pending) >= BATCH
        if self._sender is None or not self._sender.is_alive():
            if not threading.main_thread().is_alive():  # logged while the interpreter exits
                return self.flush()
            self._sender = threading.Thread(target=self._send_loop, name="hml-metrics", daemon=False)
            self._sender.start()
        if full:
            self._wake.set()
        return None

    def _send_loop(self) -> None:
        main = threading.main_thread()
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            ended = not main.is_alive()  # the program returned: send the rest, then let it exit
            try:
                self.flush()
            except Exception as exc:  # the relay is gone: nothing can take them now; say so
                print(f"hml: metrics not logged: {exc}", file=sys.stderr, flush=True)
            if ended:
                return

    def flush(self) -> None:
        """Sends every metric logged so far, in order, in batches of at most ``BATCH`` per run."""
        if self._pid != os.getpid():
            self._fresh()
        with self._sending:
            with self._lock:
                pending, self._pending = self._pending, []
            while pending:
                run_id = pending[0][0]
                count = next((i for i, (r, _) in enumerate(pending[:BATCH]) if r != run_id), None)
                count = count or min(len(pending), BATCH)
                batch, pending = pending[:count], pending[count:]
                super().log_batch(run_id, [m for _, m in batch], [], [])  # type: ignore[no-untyped-call]


def _sends_metrics_first(name: str) -> Any:
    def method(self: BufferedRestStore, *args: Any, **kwargs: Any) -> Any:
        self.flush()
        return getattr(RestStore, name)(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in (
    "get_run",
    "get_metric_history",
    "search_runs",
    "update_run_info",
    "log_param",
    "set_tag",
    "delete_tag",
    "log_inputs",
    "log_outputs",
    "delete_run",
):
    if hasattr(RestStore, _name):
        setattr(BufferedRestStore, _name, _sends_metrics_first(_name))


def _sends_metrics_before_uploads(base: Any) -> Any:
    """``base`` whose uploads first send every buffered metric to the relay, which then delivers
    them before the upload. Without this a checkpoint logged as an artifact could reach the
    server before the metrics of its epoch, and a retry resuming from it after the host died
    would never log them again (tests/runners/test_ssh.py's host-death test saw that)."""

    class Repo(base):  # type: ignore[misc]
        def log_artifact(self, *args: Any, **kwargs: Any) -> Any:
            for store in list(_STORES):
                store.flush()
            return super().log_artifact(*args, **kwargs)

        def log_artifacts(self, *args: Any, **kwargs: Any) -> Any:
            for store in list(_STORES):
                store.flush()
            return super().log_artifacts(*args, **kwargs)

    Repo.__name__ = Repo.__qualname__ = base.__name__
    return Repo


mlflow_artifacts_repo = _sends_metrics_before_uploads(MlflowArtifactsRepository)
"""The ``mlflow-artifacts`` scheme's repository (the entry point ``mlflow.artifact_repository``)."""
http_artifact_repo = _sends_metrics_before_uploads(HttpArtifactRepository)
"""The ``http``/``https`` schemes' repository."""
