"""Team budgets no run can overshoot: every submit, a run or a sweep's trial, on any target.

A run's worst case is its price (on-prem GPU hours at the internal rate, cloud at the
instance price) x nodes x ``max_runtime``. A submit passes when the team's month-to-date
spend (ended runs' cost in the tracking server, plus the worst case of those still running)
plus its own worst case stays within the team's ``monthly_usd``; else it is refused, exit 2,
with the numbers. The check and the creation of the run (tagged with its worst case, so the
next check counts it) happen under one lock in ``$HML_HOME``: of two submits racing for the
last dollars on this machine, one passes. Submits from other machines or other ``HML_HOME``s
are not serialised with these (docs/sweeps.md says what that leaves open).
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hmlkit.errors import UsageError
from hmlkit.profile import TeamBudget
from runners.spec import JobSpec
from runners.state.paths import home
from runners.tracking.queries import Spend, month_spend

LOCK = "budget.lock"


class BudgetExceeded(UsageError):
    """Refused for money: nothing was started."""


def hourly_usd(spec: JobSpec, target_config: dict[str, Any], launch: dict[str, Any]) -> float:
    """What the run costs per hour of running on the chosen target: the cloud's price for its
    nodes where the target says (``describe_plan``), else GPUs x nodes at the internal rate."""
    if "hourly_usd" in launch:
        return float(launch["hourly_usd"])
    return float(target_config.get("gpu_hour_usd", 0.0)) * spec.resources.gpus * spec.num_nodes


def worst_case_usd(spec: JobSpec, hourly: float) -> float | None:
    """Price x ``max_runtime``; None when that has no bound (a priced run without max_runtime)."""
    if hourly == 0:
        return 0.0
    if not spec.max_runtime:
        return None
    return round(hourly * spec.max_runtime / 3600, 6)


def month_start(now: float | None = None) -> float:
    """The first instant of this calendar month, UTC: budgets are monthly, as the cloud's are."""
    today = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return today.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


@dataclass(frozen=True)
class Standing:
    team: str
    monthly_usd: float
    ended_usd: float
    running_usd: float

    @property
    def spent(self) -> float:
        return self.ended_usd + self.running_usd


def standing(tracking_uri: str, team: str, budget: TeamBudget) -> Standing:
    runs = month_spend(tracking_uri, month_start(), team)
    return _standing(team, budget, runs)


def _standing(team: str, budget: TeamBudget, runs: list[Spend]) -> Standing:
    ended = sum(s.usd for s in runs if s.status in ("FINISHED", "FAILED", "KILLED"))
    running = sum(s.usd for s in runs if s.status not in ("FINISHED", "FAILED", "KILLED"))
    return Standing(team, budget.monthly_usd, round(ended, 6), round(running, 6))


@contextmanager
def lock() -> Iterator[None]:
    """Held from the check until the run exists with its worst case tagged."""
    path = home() / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def admit(
    tracking_uri: str, team: str, budget: TeamBudget | None, spec: JobSpec, worst: float | None
) -> None:
    """Refuse (BudgetExceeded, exit 2) a run whose worst case would take ``team`` past its
    budget; call under ``lock()``, and create the run before letting go of it."""
    if budget is None:
        return
    if worst is None:
        raise BudgetExceeded(
            f"team {team!r} has a budget of {budget.monthly_usd:.2f} USD a month and this run has no "
            "bound on what it may cost: set max_runtime in the job file (or --set max_runtime=2h)"
        )
    now = standing(tracking_uri, team, budget)
    if now.spent + worst > budget.monthly_usd:
        left = max(budget.monthly_usd - now.spent, 0.0)
        raise BudgetExceeded(
            f"team {team!r} budget: this run could cost up to {worst:.2f} USD; this month "
            f"{now.ended_usd:.2f} USD spent by runs that ended and up to {now.running_usd:.2f} USD by "
            f"runs still running, of {budget.monthly_usd:.2f} USD ({left:.2f} USD left). Lower "
            "max_runtime, num_nodes or GPUs, or ask for a larger budget (the profile's budgets)"
        )
