"""The champion gate: a candidate version replaces the one holding ``champion`` only if better.

"Better" is the model's declared metric (``model:`` in the job file, recorded on each version as
``hml.gate.*``): higher or lower by more than ``margin``, and no worse than ``threshold``; and
the promotion rules (``policies.promotion``) must allow it. Every decision is written on the
candidate (``hml.gate.decision``, its reason and numbers), so the registry itself says why a
version serves or does not; the version promoted records the champion it replaced
(``hml.gate.previous_champion``), which is what ``rollback`` restores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hmlkit.errors import HmlError, InvalidInput, TrackingError
from hmlkit.profile import Profile
from policies import promotion
from runners.registry.retention import snapshot_facts
from runners.tracking.ownership import _client, _short

CHAMPION = "champion"


@dataclass(frozen=True)
class Decision:
    name: str
    version: str
    verdict: str
    """``promoted``, ``kept`` (the champion stays: not better, or below the threshold) or ``refused``
    (a promotion rule forbids it)."""
    reason: str
    metric: str = ""
    value: float | None = None
    champion: str | None = None
    champion_value: float | None = None
    rules: list[str] = field(default_factory=list)

    def tags(self) -> dict[str, str]:
        tags = {
            "hml.gate.decision": self.verdict,
            "hml.gate.reason": self.reason[:4000],
            "hml.gate.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "hml.gate.champion_version": self.champion or "",
        }
        if self.value is not None:
            tags["hml.gate.value"] = repr(self.value)
        if self.champion_value is not None:
            tags["hml.gate.champion_value"] = repr(self.champion_value)
        if self.rules:
            tags["hml.gate.rules"] = ",".join(self.rules)
        return tags

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _tracking(uri: str, what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except HmlError:
        raise
    except Exception as exc:  # mlflow raises many kinds
        raise TrackingError(f"tracking server {uri}: {what}: {_short(exc)}") from exc


def _version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise InvalidInput(
                "MODEL", [f"{name} version {version}: no such model version (hml model list {name})"]
            ) from None
        raise


def champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _metric(client: Any, version: Any, metric: str) -> float | None:
    if not version.run_id or not metric:
        return None
    value = client.get_run(version.run_id).data.metrics.get(metric)
    return None if value is None else float(value)


def _judge(client: Any, profile: Profile, mv: Any) -> Decision:
    tags = mv.tags
    metric = tags.get("hml.gate.metric", "")
    maximize = tags.get("hml.gate.direction", "maximize") == "maximize"
    margin = float(tags.get("hml.gate.margin", 0) or 0)
    threshold = float(tags["hml.gate.threshold"]) if tags.get("hml.gate.threshold") else None
    current = champion(client, mv.name)
    base = {"name": mv.name, "version": str(mv.version), "metric": metric}
    if current is not None and str(current.version) == str(mv.version):
        return Decision(**base, verdict="kept", reason="it is the champion already", champion=str(mv.version))
    value = _metric(client, mv, metric)
    held = None if current is None else str(current.version)
    theirs = None if current is None else _metric(client, current, metric)
    base.update(value=value, champion=held, champion_value=theirs)
    refusals = promotion.check(tags, snapshot_facts(profile, tags))
    if refusals:
        return Decision(
            **base,
            verdict="refused",
            reason="; ".join(map(str, refusals)),
            rules=[r.rule.id for r in refusals],
        )
    if value is None:
        return Decision(
            **base, verdict="kept", reason=f"its run logged no metric {metric or '(none declared)'!r}"
        )
    word = "at least" if maximize else "at most"
    if threshold is not None and (value < threshold if maximize else value > threshold):
        return Decision(
            **base, verdict="kept", reason=f"{metric} {value:g}: the threshold asks for {word} {threshold:g}"
        )
    if current is None:
        return Decision(**base, verdict="promoted", reason="there was no champion")
    if theirs is None:
        why = f"champion {held}'s run has no {metric}: better cannot be told (log it there, or roll back)"
        return Decision(**base, verdict="kept", reason=why)
    better = value > theirs + margin if maximize else value < theirs - margin
    how = f"{metric} {value:g} vs champion {held}'s {theirs:g} ({'higher' if maximize else 'lower'} is better"
    how += f", by more than {margin:g})" if margin else ")"
    return Decision(
        **base,
        verdict="promoted" if better else "kept",
        reason=("better: " if better else "not better: ") + how,
    )


def evaluate(uri: str, profile: Profile, name: str, version: str, again: bool = True) -> Decision:
    """Judge ``name`` ``version`` against the champion; promote it when it wins; record the decision.

    ``again``: judge a version that was judged before (``hml model promote``); without it, its
    recorded decision is returned (a supervisor's finalize that is retried judges once)."""
    client = _client(uri)

    def run() -> Decision:
        mv = _version(client, name, version)
        if not again and mv.tags.get("hml.gate.decision"):
            return Decision(name, version, mv.tags["hml.gate.decision"], mv.tags.get("hml.gate.reason", ""))
        decision = _judge(client, profile, mv)
        if decision.verdict == "kept" and decision.champion == str(mv.version):
            return decision
        tags = decision.tags()
        if decision.verdict == "promoted":
            tags["hml.gate.previous_champion"] = decision.champion or ""
        for key, value in tags.items():
            client.set_model_version_tag(name, str(mv.version), key, value)
        if decision.verdict == "promoted":
            client.set_registered_model_alias(name, CHAMPION, str(mv.version))
        return decision

    result: Decision = _tracking(uri, f"gating {name} version {version}", run)
    return result


def rollback(uri: str, name: str) -> tuple[str, str]:
    """Give ``champion`` back to the version the current champion replaced; (from, to)."""
    client = _client(uri)

    def run() -> tuple[str, str]:
        current = champion(client, name)
        if current is None:
            raise InvalidInput("MODEL", [f"{name}: no version holds {CHAMPION}; nothing to roll back"])
        previous = current.tags.get("hml.gate.previous_champion", "")
        if not previous:
            raise InvalidInput(
                "MODEL",
                [f"{name}: champion {current.version} replaced no earlier champion; nothing to roll back to"],
            )
        _version(client, name, previous)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.set_model_version_tag(name, str(current.version), "hml.gate.decision", "rolled back")
        client.set_model_version_tag(
            name, str(current.version), "hml.gate.reason", f"rolled back to version {previous} at {when}"
        )
        client.set_registered_model_alias(name, CHAMPION, previous)
        return str(current.version), previous

    result: tuple[str, str] = _tracking(uri, f"rolling back {name}", run)
    return result


def _row(mv: Any, held: str | None) -> dict[str, Any]:
    tags = mv.tags
    return {
        "version": str(mv.version),
        "champion": str(mv.version) == held,
        "run_id": mv.run_id,
        "created": mv.creation_timestamp,
        "inputs": _prefixed(tags, "hml.input."),
        "decision": tags.get("hml.gate.decision", ""),
        "value": tags.get("hml.gate.value"),
        "reason": tags.get("hml.gate.reason", ""),
    }


def _prefixed(tags: dict[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}


def models(uri: str) -> list[dict[str, Any]]:
    client = _client(uri)

    def run() -> list[dict[str, Any]]:
        out = []
        for rm in client.search_registered_models(max_results=1000):
            held = rm.aliases.get(CHAMPION) if isinstance(rm.aliases, dict) else None
            out.append({"name": rm.name, "champion": held, "metric": rm.tags.get("hml.gate.metric", "")})
        return out

    result: list[dict[str, Any]] = _tracking(uri, "listing models", run)
    return result


def versions(uri: str, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first, with its decision and whether it is the champion."""
    client = _client(uri)

    def run() -> list[dict[str, Any]]:
        found = client.search_model_versions(f"name = '{name}'")
        if not found:
            raise InvalidInput("MODEL", [f"{name!r}: no such registered model (hml model list)"])
        current = champion(client, name)
        held = None if current is None else str(current.version)
        return [_row(mv, held) for mv in sorted(found, key=lambda m: -int(m.version))]

    result: list[dict[str, Any]] = _tracking(uri, f"listing {name}", run)
    return result


def show(uri: str, name: str, version: str | None) -> dict[str, Any]:
    """One version (default: the champion) with its whole lineage and gate record."""
    client = _client(uri)

    def run() -> dict[str, Any]:
        current = champion(client, name)
        mv = _version(client, name, version) if version else current
        if mv is None:
            raise InvalidInput("MODEL", [f"{name}: no version holds {CHAMPION}; name one: {name}@VERSION"])
        held = None if current is None else str(current.version)
        return {
            "name": name,
            **_row(mv, held),
            "source": mv.source,
            "lineage": _prefixed(mv.tags, "hml.lineage."),
            "gate": _prefixed(mv.tags, "hml.gate."),
        }

    result: dict[str, Any] = _tracking(uri, f"reading {name}", run)
    return result
