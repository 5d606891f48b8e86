"""Relay journals a job left behind, sent home by the runner on its next contact with the run.

The job wrapper waits ``TRACKING_RELAY_DRAIN_S`` for its relay's journal to drain; past that it
stops the relay and leaves the journal in the attempt's directory (``relay-journal/``). Nobody on
the host replays it again, so the runner does: the supervisor before the run turns terminal
(``settle``) and before each finalize attempt, and ``hml status`` / ``hml gc`` for runs already
finalized. Replay is the relay's own (hmlkit/node/relay.py: in order, in-doubt metrics checked against
the server's history, so each record lands exactly once), pointed at the tracking URI from here.
A journal is removed once every record in it is home; writes the server refused are kept beside
it (``relay-rejected.jsonl``) for a person to read.

Only journals in the run's own directory are reachable: the local target's. A journal left on an
ssh or aws host stays there (docs/relay.md).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hmlkit.errors import TrackingError
from hmlkit.node import jobscript
from hmlkit.node.relay import Journal, Relay, Upstream, auth_header
from runners.state.paths import run_dir
from runners.tracking import local_server, rest

if TYPE_CHECKING:
    from runners.state.records import RunRecord

SETTLE_S = 60.0
"""The longest the supervisor keeps a run syncing before it turns terminal with records waiting;
the job's own ``TRACKING_RELAY_DRAIN_S``, when smaller, bounds it too (the host already waited)."""
UPSTREAM_TIMEOUT_S = 10.0
FINALIZE_WAIT_S = 10.0
"""Per finalize attempt: the supervisor's finalize loop does the retrying."""
LATE_WAIT_S = 30.0
"""For a run already finalized (``hml status``, ``hml gc``)."""
STALL_S = 3.0
"""Give up a try after this long without an acknowledged record once replay met an error (the
server is away), so ``hml status`` does not hang on it; a slow server that answers gets the
whole wait."""
REJECTED = "relay-rejected.jsonl"


@dataclass(frozen=True)
class Drained:
    sent: int
    left: int


def journals(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob(f"attempt-*/{jobscript.RELAY_JOURNAL}") if p.is_dir())


def drain(run_dir: Path, uri: str, wait_s: float) -> Drained:
    """Replay every leftover journal of the run in ``run_dir`` for up to ``wait_s`` seconds in all.

    A job on the embedded default logged through its local server (``runners.tracking.local_server``):
    what that server missed goes home through it, started again when it is down."""
    if not uri.startswith(("http://", "https://")) and not local_server.is_local_store(uri):
        return Drained(0, 0)  # no relay ran, so no journal was left
    deadline = time.monotonic() + wait_s
    found = journals(run_dir)
    auth = None if local_server.is_local_store(uri) else auth_header(rest.credentials())
    if local_server.is_local_store(uri) and (waiting := sum(_waiting(root) for root in found)):
        try:
            uri = local_server.ensure(wait_s)
        except RuntimeError:
            return Drained(0, waiting)
        auth = local_server.authorization()  # its own token, not the profile's credentials
    sent = left = 0
    for root in found:
        one = drain_journal(root, uri, deadline, auth)
        sent, left = sent + one.sent, left + one.left
    return Drained(sent, left)


def _waiting(root: Path) -> int:
    """Values (metrics, params, tags; other writes count one) in a journal nobody could replay now
    (0 while its relay still runs): what a job logged, however its client batched it."""
    try:
        journal = Journal(root)
    except SystemExit:
        return 0
    try:
        return journal.backlog
    finally:
        journal.close()


def drain_journal(root: Path, uri: str, deadline: float, auth: str | None = None) -> Drained:
    """Replay one journal directory to ``uri`` (``auth``: its ``Authorization``) until ``deadline``
    (a ``time.monotonic()``) and remove it once empty; a journal whose relay still runs is left
    to that relay."""
    try:
        journal = Journal(root)
    except SystemExit:  # its relay still runs: the wrapper is still waiting for it
        return Drained(0, 0)
    try:
        before = journal.backlog
        if before:
            relay = Relay(Upstream(uri, UPSTREAM_TIMEOUT_S, auth), journal)
            relay.start()
            moved, seen = time.monotonic(), journal.backlog
            while journal.backlog and time.monotonic() < deadline:
                if relay.last_error and time.monotonic() - moved > STALL_S:
                    break  # the server does not answer: the next contact tries again
                time.sleep(0.1)
                if journal.backlog != seen:
                    moved, seen = time.monotonic(), journal.backlog
            relay.stop()
        left, rejected = journal.backlog, journal.rejected()
    finally:
        journal.close()
    if not left:
        if rejected:
            shutil.move(root / "rejected.jsonl", root.parent / REJECTED)
        shutil.rmtree(root)
    return Drained(before - left, left)


def settle(record: RunRecord, note: Callable[[str], None]) -> None:
    """Before the attempt's end is recorded: its leftover records go home while the run shows
    ``syncing N records``, or, past the wait, the log says where they wait and who sends them."""
    envs = record.spec.get("envs", {})
    try:
        wait_s = min(SETTLE_S, float(envs.get("TRACKING_RELAY_DRAIN_S", SETTLE_S)))
    except ValueError:
        wait_s = SETTLE_S
    deadline = time.monotonic() + wait_s
    while (got := drain(record.dir, record.tracking_uri, min(5.0, max(deadline - time.monotonic(), 0)))).left:
        if time.monotonic() >= deadline:
            where = ", ".join(str(p) for p in journals(record.dir))
            note(
                f"{got.left} records wait in {where}; they are sent before the run is finalized, "
                "or by `hml status` / `hml gc` once the tracking server answers"
            )
            return
        reason = jobscript.syncing_detail([str(got.left)])
        if reason != record.reason:
            record.reason = reason
            record.save()


def send_home(record: RunRecord) -> None:
    """Before a finalize attempt: the run's end must follow its records, never overtake them (the
    job's own end-of-run write in a journal would otherwise overwrite the runner's)."""
    got = drain(record.dir, record.tracking_uri, FINALIZE_WAIT_S)
    if got.left:
        raise TrackingError(f"{got.left} journaled records not yet accepted by {record.tracking_uri}")


def catch_up(record: dict[str, Any]) -> str:
    """For a finalized run (its record as JSON, as ``record_files`` reads it) that still has a
    journal: what sending it did ("" when none was left)."""
    where = run_dir(record["run_id"])
    if not record.get("finalized") or not journals(where):
        return ""
    got = drain(where, record["tracking_uri"], LATE_WAIT_S)
    if got.left:
        return f"{got.left} records still wait for the tracking server ({got.sent} sent)"
    return f"sent {got.sent} leftover records to the tracking server"
