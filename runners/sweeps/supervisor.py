"""The sweep's supervisor: one detached process per sweep that asks Optuna for trials, submits
each as an ordinary hml run, feeds the metrics those runs log back to the study, and ends the
sweep with the best trial on the parent MLflow run.

It holds the same lock a run's supervisor holds (in the sweep's directory), so any later
``hml`` command that finds it dead starts another (``hml status SWEEP``), which goes on from
the study's storage: a trial already submitted is followed, never submitted again, and one
whose submit the dead supervisor did not finish is submitted once.

How a trial is tied to its run, in the order that makes a restart safe:
``study.ask`` stores the trial and its params; the submit tags the MLflow run with the
sweep and trial number and, the moment the run exists, the run's id goes into the trial's
user attributes; the run's record follows, then its own supervisor. A restart finds a trial
with no run id, or one whose record never got written: that submit died before any job
started, so its MLflow run (if any, found by its tags) is ended FAILED and the trial is
submitted again. Every other trial has a record and a supervisor of its own.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from hmlkit.errors import HmlError, TrackingError
from hmlkit.extras import require
from runners.backends.base import Usage
from runners.runs import supervision
from runners.runs.budget import BudgetExceeded
from runners.runs.submit import AUTO, Plan, submit
from runners.runs.supervision import ensure_supervised
from runners.runs.supervisor import CAPACITY_WAIT as WAITING
from runners.state import record_files
from runners.state.lock import lock
from runners.sweeps.config import Choice, Int, SweepConfig, override
from runners.sweeps.record import SweepRecord
from runners.tracking import ownership, queries

TICK_S = 0.5
RECHECK_S = 5.0
"""How often a live trial's supervisor is checked (and restarted when it died)."""
SUBMIT_FAILURES = 3
"""Trials in a row whose submit failed before the sweep stops asking for more."""
RUN_ID, PRUNED, WORST, REASON = "hml.run_id", "hml.pruned_at", "hml.worst_usd", "hml.reason"


def _spent(run: dict[str, Any], now: float) -> float:
    """What a trial's run has cost: its bill once ended, else its running time so far."""
    if run.get("status") in record_files.TERMINAL:
        billed = run.get("instance_cost_usd")
        return float(billed if billed is not None else run.get("cost_usd", 0.0))
    if not run.get("usage") or not run.get("started_at"):
        return 0.0
    return Usage(**run["usage"]).cost_usd(now - run["started_at"])


class SweepSupervisor:
    def __init__(self, rec: SweepRecord, log: TextIO) -> None:
        self.optuna: Any = require("optuna", "hml sweep")
        self.optuna.logging.set_verbosity(self.optuna.logging.WARNING)
        self.rec, self.log = rec, log
        self.cfg = SweepConfig.model_validate(rec.sweep)
        self.study = self.optuna.create_study(
            storage=rec.storage_url,
            study_name=rec.run_id,
            direction=self.cfg.objective.direction,
            sampler=self._sampler(),
            pruner=self._pruner(),
            load_if_exists=True,
        )
        self.distributions = self._distributions()
        self.stopping = rec.stopping
        self.failures = 0
        self.checked: dict[int, float] = {}
        self.worst: float | None = None
        self._out = open(rec.log_path, "a", encoding="utf-8")  # noqa: SIM115 - the sweep's life

    # -- Optuna's parts -----------------------------------------------------------------
    def _sampler(self) -> Any:
        samplers, seed = self.optuna.samplers, self.cfg.seed
        if self.cfg.sampler == "random":
            return samplers.RandomSampler(seed=seed)
        if self.cfg.sampler == "grid":
            return samplers.GridSampler(self.cfg.grid(), seed=seed)
        # a sweep is short: model the space after a quarter of it, not after Optuna's fixed 10
        startup = max(2, min(10, self.cfg.max_trials // 4))
        return samplers.TPESampler(n_startup_trials=startup, seed=seed)

    def _pruner(self) -> Any:
        p, pruners = self.cfg.pruner, self.optuna.pruners
        if p.kind == "median":
            return pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps)
        if p.kind == "hyperband":
            return pruners.HyperbandPruner(min_resource=p.min_steps)
        return pruners.NopPruner()

    def _distributions(self) -> dict[str, Any]:
        d = self.optuna.distributions
        out: dict[str, Any] = {}
        for name, dim in self.cfg.space.items():
            if isinstance(dim, Choice):
                out[name] = d.CategoricalDistribution(dim.values)
            elif isinstance(dim, Int):
                step = None if dim.log else dim.step
                out[name] = d.IntDistribution(dim.low, dim.high, log=dim.log, step=step or 1)
            else:
                out[name] = d.FloatDistribution(dim.low, dim.high, log=dim.type == "loguniform")
        return out

    # -- output -----------------------------------------------------------------------
    def note(self, text: str) -> None:
        self._out.write(f"[hml] {time.strftime('%H:%M:%S')} {text}\n")
        self._out.flush()

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    # -- trials -----------------------------------------------------------------------
    def _trials(self, *states: str) -> list[Any]:
        wanted = tuple(getattr(self.optuna.trial.TrialState, s) for s in states) if states else None
        return list(self.study.get_trials(deepcopy=False, states=wanted))

    def _limit(self) -> int:
        if self.cfg.sampler == "grid":
            return min(self.cfg.max_trials, self.cfg.grid_size())
        return self.cfg.max_trials

    def _gate(self, plan: Plan) -> None:
        """The sweep's budget, checked with the team's under the budget lock: this trial's worst
        case on the target it got, plus what ended trials cost and live ones may still cost."""
        self.worst = plan.worst_case_usd
        limit = self.cfg.max_cost_usd
        if limit is None:
            return
        if self.worst is None:
            raise BudgetExceeded(
                f"sweep max_cost_usd {limit:g} USD: a trial on {plan.target!r} has no bound on what it "
                "may cost; set max_runtime in the job file"
            )
        now = time.time()
        committed = 0.0
        for t in self._trials():
            run = self._run(t)
            if t.state.is_finished():
                committed += _spent(run, now) if run else 0.0
            else:
                committed += float(t.user_attrs.get(WORST, 0.0))
        if committed + self.worst > limit:
            raise BudgetExceeded(
                f"sweep max_cost_usd: the next trial could cost up to {self.worst:.2f} USD on "
                f"{plan.target!r}; the trials have spent or may still spend {committed:.2f} USD of "
                f"{limit:.2f} USD"
            )

    def _submit(self, trial: Any) -> None:
        number = trial.number
        params = dict(trial.params)
        overrides = [*self.rec.overrides, *(override(k, v) for k, v in params.items())]
        tags = {"mlflow.parentRunId": self.rec.run_id, "hml.sweep": self.rec.run_id, "hml.trial": str(number)}

        def on_run(run_id: str) -> None:
            trial.set_user_attr(RUN_ID, run_id)  # first: a restart finds the run by it
            trial.set_user_attr(WORST, self.worst or 0.0)

        self.worst = None
        began = time.perf_counter()
        try:
            run = submit(
                self.rec.job_path,
                self.rec.target,
                overrides,
                self.rec.config,
                tags=tags,
                gate=self._gate,
                on_run=on_run,
            )
        except BudgetExceeded as exc:
            self._fail(trial, f"not started: {exc}")
            self._stop(str(exc).splitlines()[0])
            return
        except HmlError as exc:
            self._fail(trial, f"not started: {exc}")
            self.failures += 1
            if self.failures >= SUBMIT_FAILURES:
                self._stop(f"{self.failures} trials in a row could not be submitted; the last: {exc}")
            return
        self.failures = 0
        took = time.perf_counter() - began  # bench/bench_sweep.py reads it: dispatch cost per trial
        self.note(
            f"trial {number} {params} -> run {run.run_id[:8]} on {run.target!r} (submitted in {took:.3f} s)"
        )

    def _occupied(self) -> int:
        """Live trials that hold or wait for capacity: one whose run ended frees its place while
        its end is still being sent to the tracking server."""
        held = 0
        for t in self._trials("RUNNING"):
            run = self._run(t)
            held += run is None or run.get("status") not in record_files.TERMINAL
        return held

    def _launching(self) -> bool:
        """With ``--target auto``, a trial submitted but not yet started holds no capacity, so
        the next submit would see the first target free and queue behind it: the next trial
        waits until the last one started or is waiting for room, and then spills."""
        if self.rec.target != AUTO:
            return False
        for t in self._trials("RUNNING"):
            run = self._run(t)
            if run and run.get("status") == "PENDING" and run.get("reason") != WAITING:
                return True
        return False

    def _writable(self, trial: Any) -> Any:
        """The trial as one whose attributes and reports go to the storage (a frozen one's do not)."""
        return self.optuna.trial.Trial(self.study, trial._trial_id)

    def _fail(self, trial: Any, reason: str) -> None:
        self._writable(trial).set_user_attr(REASON, reason[:2000])
        self.study.tell(trial.number, state=self.optuna.trial.TrialState.FAIL, skip_if_finished=True)
        self.note(f"trial {trial.number} failed: {reason.splitlines()[0]}")

    def _stop(self, why: str) -> None:
        if not self.stopping:
            self.stopping = self.rec.stopping = why
            self.rec.save()
            self.note(f"no more trials: {why}")

    def _run(self, trial: Any) -> dict[str, Any] | None:
        run_id = trial.user_attrs.get(RUN_ID)
        if not run_id:
            return None
        try:
            return record_files.read(run_id)
        except HmlError:
            return None

    def _adopt(self, trial: Any) -> None:
        """A live trial without a run record: its submit died before the job could start."""
        found = trial.user_attrs.get(RUN_ID)
        tagged = {"hml.sweep": self.rec.run_id, "hml.trial": str(trial.number)}
        ids = set(queries.tagged_runs(self.rec.tracking_uri, [self.rec.experiment_id], tagged))
        for run_id in ids | ({found} if found else set()):
            ownership.fail_run(
                self.rec.tracking_uri, run_id, "the sweep's supervisor died before the job started"
            )
        self.note(f"trial {trial.number}: its submit was cut off before the job started; submitting it again")
        self._submit(self._writable(trial))

    def _follow(self, trial: Any) -> None:
        run = self._run(trial)
        if run is None:
            if not self.stopping:
                self._adopt(trial)
            else:
                self._fail(trial, f"not started: {self.stopping}")
            return
        if run.get("status") not in record_files.TERMINAL or not run.get("finalized"):
            if time.monotonic() - self.checked.get(trial.number, 0.0) > RECHECK_S:
                ensure_supervised(run["run_id"], run.get("finalized", False))
                self.checked[trial.number] = time.monotonic()
            if (
                run.get("status") == "RUNNING"
                and self.cfg.pruner.kind != "none"
                and PRUNED not in trial.user_attrs
            ):
                self._report(trial, run["run_id"])
            return
        self._finish(trial, run)

    def _report(self, trial: Any, run_id: str) -> None:
        """Hand the pruner the values the run logged since the last look; stop it if pruned."""
        try:
            history = queries.metric_history(self.rec.tracking_uri, run_id, self.cfg.objective.metric)
        except TrackingError as exc:
            self.say(f"trial {trial.number}: {exc}")
            return
        new = {s: v for s, v in history.items() if s not in trial.intermediate_values}
        if not new:
            return
        live = self._writable(trial)
        for s, v in sorted(new.items()):
            live.report(v, s)
        if live.should_prune():
            at = max(new)
            live.set_user_attr(PRUNED, at)
            record_files.cancel_flag(run_id).touch()
            ensure_supervised(run_id, False)
            self.note(f"trial {trial.number} pruned at step {at} ({self.cfg.objective.metric} {new[at]:g})")

    def _finish(self, trial: Any, run: dict[str, Any]) -> None:
        states = self.optuna.trial.TrialState
        metric = self.cfg.objective.metric
        history = queries.metric_history(self.rec.tracking_uri, run["run_id"], metric)
        value = history[max(history)] if history else None
        if PRUNED in trial.user_attrs:
            state, why = states.PRUNED, f"pruned at step {trial.user_attrs[PRUNED]}"
        elif run["status"] == "FINISHED" and value is not None:
            state, why = states.COMPLETE, f"{metric} {value:g}"
        elif run["status"] == "FINISHED":
            state, why = states.FAIL, f"the run logged no {metric}"
        else:
            state, why = states.FAIL, f"run {run['status']}: {run.get('reason') or 'no reason given'}"
        tags = {"hml.trial_state": state.name, "hml.trial_reason": why[:5000]}
        queries.update_run(self.rec.tracking_uri, run["run_id"], tags=tags)
        if state == states.COMPLETE:
            self.study.tell(trial.number, value, skip_if_finished=True)
        else:
            if state == states.FAIL:
                self._writable(trial).set_user_attr(REASON, why[:2000])
            self.study.tell(trial.number, state=state, skip_if_finished=True)
        self.note(f"trial {trial.number} {state.name} on {run['target']!r}: {why}")
        self._best()

    def _best(self) -> None:
        try:
            best = self.study.best_trial
        except ValueError:  # no trial complete yet
            return
        if self.rec.best and self.rec.best["number"] == best.number:
            return
        self.rec.best = {"number": best.number, "value": best.value, "params": best.params}
        queries.update_run(
            self.rec.tracking_uri,
            self.rec.run_id,
            tags={f"hml.best.{k}": str(v) for k, v in best.params.items()}
            | {"hml.best_trial": str(best.number)},
            metrics={"best_value": float(best.value)},
            step=len(self._trials()),
        )
        self.note(
            f"best so far: trial {best.number}, {self.cfg.objective.metric} {best.value:g}, {best.params}"
        )

    # -- the loop ---------------------------------------------------------------------
    def _spend(self) -> float:
        now = time.time()
        return round(sum(_spent(r, now) for r in (self._run(t) for t in self._trials()) if r), 6)

    def _cancel_live(self) -> None:
        for t in self._trials("RUNNING"):
            run = self._run(t)
            if run and run.get("status") not in record_files.TERMINAL:
                record_files.cancel_flag(run["run_id"]).touch()
                ensure_supervised(run["run_id"], run.get("finalized", False))

    def _summary(self) -> list[dict[str, Any]]:
        rows = []
        for t in self._trials():
            run = self._run(t)
            rows.append(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "params": t.params,
                    "value": t.value,
                    "run_id": t.user_attrs.get(RUN_ID),
                    "target": run["target"] if run else None,
                    "run_status": run.get("status") if run else None,
                    **({"reason": t.user_attrs[REASON]} if REASON in t.user_attrs else {}),
                }
            )
        return rows

    def _save(self) -> None:
        self.rec.trials = self._summary()
        self.rec.cost_usd = self._spend()
        self.rec.save()

    def run(self) -> None:
        self.rec.status = "RUNNING"
        self.rec.started_at = self.rec.started_at or time.time()
        self.rec.supervisor_pid = os.getpid()
        self._save()
        self.note(f"supervisor {os.getpid()} following the sweep ({len(self._trials())} trials so far)")
        cancelled = False
        while True:
            for t in self._trials("RUNNING"):
                try:
                    self._follow(t)
                except TrackingError as exc:  # the server is down: the next tick asks again
                    self.say(f"trial {t.number}: {exc}")
            if record_files.cancel_flag(self.rec.run_id).exists() and not cancelled:
                cancelled = True
                self._stop("cancelled by user")
                self._cancel_live()
            limit = self.cfg.max_cost_usd
            if limit is not None and not cancelled and self._spend() > limit:
                self._stop(f"max_cost_usd reached ({self._spend():.2f} of {limit:g} USD)")
                self._cancel_live()
            while not self.stopping and self._occupied() < self.cfg.parallel:
                if len(self._trials()) >= self._limit() or self._launching():
                    break
                self._submit(self.study.ask(self.distributions))
            self._save()
            if not self._trials("RUNNING") and (self.stopping or len(self._trials()) >= self._limit()):
                break
            time.sleep(TICK_S)
        self._end("KILLED" if cancelled else None)

    def _end(self, status: str | None) -> None:
        done = self._trials("COMPLETE")
        self.rec.status = status or ("FINISHED" if done else "FAILED")
        counts = {s: len(self._trials(s)) for s in ("COMPLETE", "PRUNED", "FAIL")}
        said = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
        self.rec.reason = f"{self.stopping}; {said}" if self.stopping else said or "no trial ran"
        self.rec.ended_at = time.time()
        self._save()
        self.note(f"sweep {self.rec.status} ({self.rec.reason})")
        if self.rec.best:
            params = {f"best.{k}": str(v) for k, v in self.rec.best["params"].items()}
            try:
                queries.update_run(self.rec.tracking_uri, self.rec.run_id, params=params)
            except TrackingError as exc:
                self.say(f"best params not logged: {exc}")
        self.finalize()

    def finalize(self) -> None:
        self._out.close()
        start = self.rec.started_at or self.rec.submitted_at
        for attempt in range(30):
            try:
                ownership.finalize(
                    self.rec.tracking_uri,
                    self.rec.run_id,
                    self.rec.status,
                    None,
                    self.rec.reason,
                    duration_s=(self.rec.ended_at or time.time()) - start,
                    cost_usd=self.rec.cost_usd,
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


def main(sweep_id: str) -> int:
    os.umask(0o077)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    rec = SweepRecord.model_validate(record_files.read(sweep_id))
    held = lock(rec.dir)
    if held is None:
        return 0  # another supervisor has it
    try:
        rec = SweepRecord.model_validate(record_files.read(sweep_id))  # re-read under the lock
        sup = SweepSupervisor(rec, sys.stdout)
        if rec.terminal:
            sup.finalize()
            return 0
        # trials' supervisors run here, in threads, as in the warm agent's workers: each gets the
        # submit's open backend (hosts reached) and no interpreter to start, so trials launch
        # sooner; killed with this process, each is restarted by the next look (RECHECK_S)
        supervision.supervise_here()
        try:
            sup.run()
        except Exception as exc:  # a bug must still end the sweep, never leave it RUNNING
            import traceback

            traceback.print_exc()
            sup._cancel_live()
            sup._stop(f"runner error: {type(exc).__name__}: {exc} (see supervisor.log)")
            sup._end("FAILED")
    finally:
        held.close()
    supervision.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
