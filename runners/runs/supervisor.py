"""The supervisor: one detached process per run that drives a backend to the end.

It is started by ``hml submit`` in its own session, so closing the terminal or killing
``hml`` does not stop it, and restarted by any later ``hml`` command that finds it gone. It
launches the job, mirrors its output (redacted) into the run's log, enforces max_runtime and
max_cost_usd, retries, honours cancel requests, and closes the MLflow run; only it writes
the record while the run is live, guarded by a lock file.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TextIO

from hmlkit.errors import BackendError, HmlError, HostFault, NoCapacityError, TrackingError
from runners.backends import make_backend
from runners.backends.base import Backend, Handle, JobState, LaunchRequest, Usage
from runners.data.inputs import Input
from runners.data.inputs import load as load_inputs
from runners.envs import lock as envlock
from runners.runs import telemetry
from runners.runs.jobenv import job_env, relay_secrets, tracking_credentials
from runners.runs.secrets import Redactor, resolve
from runners.spec import JobSpec
from runners.state import record_files, records
from runners.state.lock import lock
from runners.state.records import RunRecord
from runners.tracking import backlog, lineage, local_server, ownership, rest

LOST_AFTER_S = 30.0
"""How long a target may stay unreachable before the job counts as lost (host died)."""
FINALIZE_TRIES = 30
CAPACITY_RETRY_S = 5.0
CAPACITY_WAIT = "waiting for capacity"
"""A run's reason while no target has room for it (it is PENDING, not launching)."""
MIN_POLL_GAP_S = 0.02
"""A job that writes without pause is read in batches, not once per packet."""


class Supervisor:
    def __init__(self, record: RunRecord, backend: Backend, log: TextIO) -> None:
        self.rec = record
        self.backend = backend
        self.log = log
        """supervisor.log: the runner's own account (commands sent, finalize retries), not the job's."""
        self.spec = JobSpec.model_validate(record.spec)
        self.redact = Redactor([])
        self._out = open(record.log_path, "a", encoding="utf-8")  # noqa: SIM115
        if record.log_bytes is not None and self._out.tell() > record.log_bytes:
            self._out.truncate(record.log_bytes)  # written by a supervisor killed before it saved
            self._out.seek(record.log_bytes)

    # -- output -----------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    def note(self, text: str) -> None:
        self._out.write(self.redact(f"[hml] {text}\n"))
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Save the log's length with the read position: what a restart resumes from, exactly."""
        self._out.flush()
        self.rec.log_bytes = self._out.tell()
        self.rec.save()

    def _copy_output(self, handle: Handle, final: bool = False) -> None:
        chunk = self.backend.read_output(handle)
        if chunk:
            text = self.rec.log_pending + chunk.decode("utf-8", errors="replace")
            head, _, self.rec.log_pending = text.rpartition("\n")  # redact whole lines only
            if head:
                self._out.write(self.redact(head + "\n"))
                self._tag(envlock.seen_tags(head))  # what the job's environment saw, per node
            self.rec.handle = handle.model_dump()  # the read position: a restart copies no line twice
        if final and self.rec.log_pending:
            self._out.write(self.redact(self.rec.log_pending) + "\n")
            self.rec.log_pending = ""
        if chunk or final:
            self._checkpoint()

    # -- lifecycle --------------------------------------------------------------
    def _launch(self) -> Handle:
        self.backend.check(self.spec)
        env = job_env(self.rec)
        secrets = {**resolve(self.rec.secrets, self.rec.vault), **relay_secrets(self.rec, env)}
        upstream = {**rest.credentials(), **tracking_credentials(self.rec)}  # for the runner's own notes
        self.redact = Redactor([*secrets.values(), *upstream.values()])
        request = LaunchRequest(
            run_id=self.rec.run_id,
            spec=self.spec,
            workdir=Path(self.rec.workdir),
            env=env,
            secrets=secrets,
            attempt=self.rec.attempt,
            state_dir=self.rec.dir,
            inputs=tuple(load_inputs(self.rec.dir)),
            environment=envlock.load(self.rec.dir),
        )
        handle, usage = self.backend.launch(request)
        self.rec.handle = handle.model_dump()
        self._tag(self.backend.run_tags(handle))
        self.rec.usage = dict(usage.__dict__)
        self.rec.status, self.rec.reason = "RUNNING", ""
        self.rec.started_at = self.rec.started_at or time.time()
        self.rec.save()
        self.note(f"attempt {self.rec.attempt + 1} started on {', '.join(usage.hosts) or self.rec.target}")
        for host, sent in usage.data_streamed.items():
            self.note(
                f"inputs: the runner sent {sent} bytes to {host} over SSH "
                "(the host cannot reach the store, or data_via: ssh)"
            )
        self.say(
            f"attempt {self.rec.attempt + 1} started after {self.backend.commands_sent()} target commands"
        )
        return handle

    def _tag(self, tags: dict[str, str]) -> None:
        """Add an attempt's run tags to the earlier attempts': each value once, comma-separated."""
        for key, value in tags.items():
            known = self.rec.target_tags.get(key, "")
            parts = known.split(",") if known else []
            parts += [v for v in value.split(",") if v not in parts]
            self.rec.target_tags[key] = ",".join(parts)

    def _bill(self) -> None:
        """Add what the target billed since the last look (instances launched and terminated)."""
        billed = self.backend.take_billed_usd()
        if billed is not None:
            self.rec.instance_cost_usd = round((self.rec.instance_cost_usd or 0.0) + billed, 6)
            self.rec.save()

    def _cost(self) -> float:
        return Usage(**self.rec.usage).cost_usd(time.time() - (self.rec.started_at or time.time()))

    def _handle(self) -> Handle | None:
        """The live attempt's handle, as the backend made it (after a restart: from the record)."""
        return self.backend.handle_type.model_validate(self.rec.handle) if self.rec.handle else None

    def _teardown(self, handle: Handle) -> None:
        try:
            self.backend.teardown(handle)
        except BackendError as exc:  # what it holds is released by its own expiry (claims, watchdogs)
            self.note(f"could not release everything the attempt held: {exc}")

    def _watch(self, handle: Handle) -> tuple[str | None, JobState]:
        """Follow one attempt to its end, then release what it held; (why hml stopped it, end state)."""
        started = time.time()
        try:
            return self._follow(handle)
        finally:
            self._teardown(handle)
            took = time.time() - started
            self.say(
                f"attempt {self.rec.attempt + 1}: followed for {took:.1f} s; target commands so far: "
                f"{self.backend.commands_sent()}"
            )

    def _follow(self, handle: Handle) -> tuple[str | None, JobState]:
        unreachable_since: float | None = None
        interval = self.backend.poll_interval
        polled = time.time()
        while True:
            try:
                self._copy_output(handle)
                state = self.backend.poll(handle)
                unreachable_since = None
                if state.running:
                    self._running(state, time.time() - polled)
                polled = time.time()
            except HostFault as exc:  # the host answers; hml's program there died: no use waiting
                try:
                    self.backend.cancel(handle)
                except BackendError as cancel_exc:
                    self.note(f"could not stop every node: {cancel_exc}")
                return None, JobState(running=False, detail=str(exc))
            except BackendError as exc:
                unreachable_since = unreachable_since or time.time()
                if time.time() - unreachable_since > LOST_AFTER_S:
                    try:  # stop what still runs elsewhere (other nodes) before any retry
                        self.backend.cancel(handle)
                    except BackendError as cancel_exc:
                        self.note(f"could not stop every node: {cancel_exc}")
                    return None, JobState(running=False, detail=f"target unreachable: {exc}")
                time.sleep(1.0)
                continue
            if not state.running:
                self._copy_output(handle, final=True)
                return None, state
            stop = self._stop_reason()
            if stop:
                self.backend.cancel(handle)
                self._copy_output(handle, final=True)
                return stop, state
            woke = time.monotonic()
            self.backend.wait(handle, interval)  # wakes early on output: no faster polling needed
            time.sleep(max(0.0, MIN_POLL_GAP_S - (time.monotonic() - woke)))

    def _running(self, state: JobState, waited: float) -> None:
        """A job queued in the target's scheduler has not started: its start moves with the wait,
        so max_runtime, cost and duration count only running time; what the target says about
        it (queued and why, where it runs) shows in ``hml status`` and the log."""
        changed = False
        if state.queued and self.rec.started_at is not None:
            self.rec.started_at += waited
            changed = True
        if state.detail.startswith("syncing") and self.rec.target_config.get("kind") == "local":
            local_server.revive(self.rec.tracking_uri)  # the job's relay waits for the server it logged to
        if state.detail != self.rec.reason:
            if state.detail and re.sub(r"\d+", "", state.detail) != re.sub(r"\d+", "", self.rec.reason):
                self.note(state.detail)  # once per kind: a backlog counting down is not news each second
            self.rec.reason, changed = state.detail, True
        if changed:
            self.rec.save()

    def _stop_reason(self) -> str | None:
        if record_files.cancel_flag(self.rec.run_id).exists():
            return "cancelled by user"
        elapsed = time.time() - (self.rec.started_at or time.time())
        if self.spec.max_runtime and elapsed > self.spec.max_runtime:
            return f"max_runtime exceeded ({self.spec.max_runtime:g}s)"
        if self.spec.max_cost_usd is not None and self._cost() > self.spec.max_cost_usd:
            return f"max_cost_usd exceeded ({self.spec.max_cost_usd:g} USD)"
        return None

    def run(self) -> None:
        while not self.rec.terminal:
            if record_files.cancel_flag(self.rec.run_id).exists() and self.rec.handle is None:
                self._end("KILLED", None, "cancelled by user")
                break
            try:
                handle = self._handle() or self._launch()
            except NoCapacityError as exc:
                if not self.rec.wait_for_capacity:
                    self._end("FAILED", None, f"no capacity: {exc}")
                    break
                if self.rec.reason != CAPACITY_WAIT:
                    self.note(f"waiting for capacity: {exc}")
                    self.rec.reason = CAPACITY_WAIT
                    self.rec.save()
                time.sleep(CAPACITY_RETRY_S)
                continue
            except HmlError as exc:
                self._bill()  # a launch that failed after RunInstances still ran its instances
                self.note(f"launch failed: {exc}")
                self._end("FAILED", None, f"launch failed: {exc}")
                break
            stop, state = self._watch(handle)
            backlog.settle(self.rec, self.note)
            self.rec.cost_usd = self._cost()
            self._bill()
            if stop:
                self._end("KILLED" if stop.startswith("cancelled") else "FAILED", state.exit_code, stop)
            elif state.exit_code == 0:
                self._end("FINISHED", 0, "succeeded")
            else:
                why = state.detail or f"exit code {state.exit_code}"
                if self.rec.attempt < self.spec.retries:
                    self.note(f"attempt {self.rec.attempt + 1} failed ({why}); retrying")
                    self.rec.attempt += 1
                    self.rec.handle = None
                    self.rec.save()
                    continue
                self._end("FAILED", state.exit_code, why)
        self.finalize()

    def _end(self, status: str, exit_code: int | None, reason: str) -> None:
        self.rec.status, self.rec.exit_code, self.rec.reason = status, exit_code, reason
        self.rec.ended_at = time.time()
        self.note(f"run {status} ({reason})")
        self.rec.save()
        for problem in telemetry.publish(self.rec, self.backend.config.telemetry):
            self.note(f"telemetry not sent: {problem}")

    def _tag_models(self, inputs: list[Input]) -> None:
        """Best effort: a server without logged models must not hold the run open; an outage
        fails the finalize that follows, which retries both."""
        try:
            lineage.tag_models(self.rec.tracking_uri, self.rec.run_id, self.rec.experiment_id, inputs)
        except TrackingError as exc:
            self.say(f"models not tagged with their inputs: {exc}")

    def _register(self, inputs: list[Input]) -> dict[str, str]:
        """A job with a ``model:`` section that succeeded: its logged model registered with its
        lineage, then gated against the champion; what happened, as run tags. The server being
        down fails the finalize attempt (retried: both steps are idempotent); a run without a
        model to register is said, not retried."""
        model = self.spec.model
        if model is None or self.rec.status != "FINISHED":
            return {}
        from hmlkit.extras import MissingExtra
        from hmlkit.profile import Profile
        from runners.registry import gate
        from runners.registry import lineage as model_lineage

        tags: dict[str, str] = {}
        try:
            version = model_lineage.register(self.rec.tracking_uri, self.rec.run_id, inputs, model)
            tags["hml.model.version"] = f"{model.name}/{version}"
            stores = Profile(stores={i.snapshot.store: i.store for i in inputs}, source="the run's inputs")
            decision = gate.evaluate(self.rec.tracking_uri, stores, model.name, version, again=False)
        except TrackingError:
            raise
        except (HmlError, MissingExtra) as exc:  # said on the run; the run itself succeeded
            what = "not gated" if tags else "not registered"
            self.say(f"model {what}: {exc}")
            return {**tags, "hml.model.reason": f"{what}: {exc}"[:5000]}
        self.say(f"model {model.name} version {version}: {decision.verdict} ({decision.reason})")
        return {**tags, "hml.model.reason": f"{decision.verdict}: {decision.reason}"[:5000]}

    def finalize(self) -> None:
        """Hand the end to the tracking server, retrying while it is down; the record keeps all."""
        self._out.close()
        start = self.rec.started_at or self.rec.submitted_at
        inputs = load_inputs(self.rec.dir)
        for attempt in range(FINALIZE_TRIES):
            try:
                backlog.send_home(self.rec)
                self._tag_models(inputs)
                model_tags = self._register(inputs)
                ownership.finalize(
                    self.rec.tracking_uri,
                    self.rec.run_id,
                    self.rec.status,
                    self.rec.exit_code,
                    self.rec.reason,
                    duration_s=(self.rec.ended_at or time.time()) - start,
                    cost_usd=self.rec.cost_usd,
                    instance_cost_usd=self.rec.instance_cost_usd,
                    tags={**self.rec.target_tags, **model_tags},
                    log_path=self.rec.log_path,
                    ended_at=self.rec.ended_at or time.time(),
                )
            except TrackingError as exc:
                self.say(f"finalize attempt {attempt + 1}: {exc}")
                time.sleep(min(2**attempt, 30))
                continue
            self.rec.finalized = True
            self.rec.save()
            return


def _supervise(sup: Supervisor) -> None:
    """Drive the run; a bug here must still end the run FAILED, never leave it PENDING forever."""
    try:
        sup.run()
    except Exception as exc:
        import traceback

        traceback.print_exc(file=sup.log)
        handle = sup._handle()
        if handle is not None:
            try:
                sup.backend.cancel(handle)
                sup.backend.teardown(handle)
            except HmlError:
                pass
            sup._bill()
        sup._end("FAILED", None, f"runner error: {type(exc).__name__}: {exc} (see supervisor.log)")
        sup.finalize()


def main(run_id: str, backend: Backend | None = None, log: TextIO | None = None) -> int:
    """Supervise ``run_id`` to its end, unless another supervisor holds it.

    ``backend``: one the caller has open (the submit's, its hosts already reached), handed over
    to be closed here; ``log``: supervisor.log when this does not run as its own process.
    """
    os.umask(0o077)  # the run's files are its owner's alone
    # one finalize attempt must fail fast when the server is down; our loop does the waiting
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    record = records.load(run_id)
    held = lock(record.dir)
    if held is None:
        if backend is not None:
            backend.close()
        return 0  # another supervisor has it
    record = records.load(run_id)  # re-read under the lock
    record.supervisor_pid = os.getpid()
    record.save()
    backend = backend or make_backend(record.target, record.target_config)
    try:
        sup = Supervisor(record, backend, log or sys.stdout)
        if record.terminal:
            sup.finalize()
        else:
            _supervise(sup)
    finally:
        backend.close()
        held.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
